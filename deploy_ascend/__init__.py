"""deploy_ascend."""
