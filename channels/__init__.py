"""Channel adapters: one module per channel, each declaring its limits and raising typed errors."""
