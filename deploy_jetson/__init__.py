"""deploy_jetson."""
