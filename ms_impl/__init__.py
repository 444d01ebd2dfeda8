"""ms_impl."""
