"""torch_ref."""
