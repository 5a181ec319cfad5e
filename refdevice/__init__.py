"""The reference device (protocol v1 logic for real boards and speakers, and the simulator),
and a stand-in for the WeCom group-robot webhook (refdevice.wecom_standin)."""
