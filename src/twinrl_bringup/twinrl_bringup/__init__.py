"""TwinRL bringup: configuration, graphs, adapters and the twinrl command."""
