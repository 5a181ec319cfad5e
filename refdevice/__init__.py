"""The reference device: protocol v1 logic for real boards and speakers, and the simulator."""
