"""The reference device (protocol v1 logic for real boards and speakers, and the simulator),
and local stand-ins for the WeCom group-robot webhook (refdevice.wecom_standin) and the
WeChat official-account API (refdevice.wechat_mp_standin)."""
