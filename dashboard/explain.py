"""What a person should do about a failure, in words a township officer understands.

The delivery already says *what* went wrong (``error_zh``/``error_en``, written by the
channel); this table adds *what to do*, keyed by ``error_code`` (exact codes first, then
prefixes such as ``device_``). Vendor codes are the WeCom and WeChat ``errcode`` values.
"""

from __future__ import annotations

from content_queue.i18n import Text, tr

__all__ = ["suggested_fix"]

_EXACT: dict[str, Text] = {
    "attempts_exhausted": tr(
        "多次尝试都失败了：先看上面的错误说明，检查该渠道的网络或服务，恢复后点「重试」。",
        "Every attempt failed: read the error, check the channel's network or service, then retry.",
    ),
    "worker_lost": tr(
        "发送这条内容时工作进程多次崩溃，可能是内容触发了程序错误：请把通知编号和工作进程日志"
        "发给技术支持，不要反复重试。",
        "The worker crashed on this content every time: send the notice id and the worker "
        "log to support rather than retrying.",
    ),
    "endpoint_removed": tr(
        "这个端点已从 devices.yaml 中删除。如果仍要发送，请恢复登记（villagecast devices check）"
        "后重试；否则无需处理。",
        "The endpoint was removed from devices.yaml. Restore it and retry if it should "
        "still get the notice; otherwise nothing to do.",
    ),
    "config": tr(
        "配置有误（例如密钥所在的环境变量没有设置）：按错误说明修改工作进程的配置并重启，"
        "然后重试。",
        "A configuration problem (e.g. the secret's environment variable is not set): fix "
        "the worker's configuration, restart it, then retry.",
    ),
    "registry": tr(
        "devices.yaml 有错误：运行 villagecast devices check 找到并改正，然后重试。",
        "devices.yaml is broken: run `villagecast devices check`, fix it, then retry.",
    ),
    "encoding": tr(
        "显示屏的字库（GB2312）没有通知里的某些字（常见于人名用字）：改写这些字，"
        "或把该屏的 encoding 改为 gbk/utf-8 后重试。",
        "The board's character set lacks some characters (often in names): rewrite them, "
        "or set the board's encoding to gbk/utf-8, then retry.",
    ),
    "too_long": tr(
        "内容超过该渠道的长度上限：精简正文或拆成几条通知。",
        "Too long for this channel: shorten the body or split the notice.",
    ),
    "empty": tr("内容为空：补充正文后重新发布。", "Nothing to send: add a body and publish again."),
    "content": tr(
        "内容不适合这个渠道：按错误说明修改通知（更正）后再发。",
        "The content does not fit this channel: correct the notice as the error says.",
    ),
    "device_bad_signature": tr(
        "设备验证签名失败：确认设备上的公钥与 villagecast keys export 的输出一致，"
        "必要时重新下发公钥，然后重试。",
        "The device could not verify the signature: give it the current public keys "
        "(`villagecast keys export`), then retry.",
    ),
    "device_unknown_key": tr(
        "设备不认识签名密钥（密钥轮换后没有更新设备）：用 villagecast keys export 导出公钥"
        "下发给设备，然后重试。",
        "The device does not know the signing key (rotated without updating it): give it "
        "the output of `villagecast keys export`, then retry.",
    ),
    "device_clock_skew": tr(
        "设备时钟不准：在设备上开启网络校时（NTP）或手动校准，然后重试。",
        "The device clock is off: enable NTP on the device or set its time, then retry.",
    ),
    "device_bad_clip": tr(
        "广播音箱无法下载音频或校验不符：确认音箱能访问 VILLAGECAST_FEED_BASE_URL 指向的地址"
        "（/audio/…），然后重试。",
        "The loudspeaker could not fetch the clip: make sure it can reach "
        "VILLAGECAST_FEED_BASE_URL (/audio/...), then retry.",
    ),
    "device_expired": tr(
        "指令到达设备时已过期（设备长时间离线）：如通知仍有效，点「重试」重新下发。",
        "The command expired before the device got it (offline too long): retry if the "
        "notice still matters.",
    ),
    "device_unsupported": tr(
        "设备固件不支持这种指令：升级设备固件。",
        "The firmware does not support this command: upgrade it.",
    ),
    "device_malformed": tr(
        "设备无法解析指令：检查设备固件版本是否与协议 v1 兼容，联系设备厂家。",
        "The device could not parse the command: check its firmware against protocol v1.",
    ),
    "mqtt_unreachable": tr(
        "连不上 MQTT 服务器：检查 mosquitto 是否运行、网络是否通，恢复后重试。",
        "The MQTT broker cannot be reached: check that mosquitto runs and the network, then retry.",
    ),
    "mqtt_timeout": tr(
        "MQTT 服务器没有及时确认：检查服务器负载和网络，恢复后重试。",
        "The MQTT broker did not confirm in time: check its load and the network, then retry.",
    ),
    "no_play_time": tr(
        "所有播放时间都落在静默时段内：调整村的 quiet_hours 或把通知设为紧急。",
        "Every play time falls in quiet hours: change the village's quiet_hours or mark "
        "the notice as an emergency.",
    ),
    "audio": tr(
        "语音合成或音频转换失败：检查 ffmpeg 和 espeak-ng 是否安装（scripts/dev setup），"
        "然后重试。",
        "Speech synthesis or audio conversion failed: check ffmpeg and espeak-ng "
        "(scripts/dev setup), then retry.",
    ),
    "recall_unsupported": tr(
        "这个渠道不能自动撤回：请人工处理（例如在群里发一条撤回说明）。",
        "This channel cannot take the notice back: do it by hand (e.g. post a note in the group).",
    ),
    "internal": tr(
        "程序内部错误：把通知编号和工作进程日志发给技术支持。",
        "An internal error: send the notice id and the worker log to support.",
    ),
    # WeCom group robots.
    "93000": tr(
        "群机器人的 webhook key 无效（机器人被移出群或被删除）：在群里重新添加机器人，"
        "把新的 key 写入对应环境变量并重启工作进程，然后重试。",
        "The robot's webhook key is invalid (removed from the group): add the robot again, "
        "put the new key in its environment variable, restart the worker, then retry.",
    ),
    "45009": tr(
        "超过发送频率限制：稍后点「重试」即可。",
        "Rate limited by the vendor: retry a little later.",
    ),
    "-1": tr("对方系统繁忙：稍后重试。", "The vendor is busy: retry later."),
    # WeChat official accounts.
    "40001": tr(
        "公众号 access_token 无效：检查 AppSecret 环境变量和 IP 白名单，然后重试。",
        "The official account's token is invalid: check the AppSecret variable and the IP "
        "allow-list, then retry.",
    ),
    "40164": tr(
        "服务器 IP 不在公众号的 IP 白名单中：在公众平台添加本机出口 IP，然后重试。",
        "This server's IP is not on the account's allow-list: add it, then retry.",
    ),
    "45065": tr(
        "这条群发已经发过（重复的 clientmsgid），无需再发。",
        "This mass send already went out (same clientmsgid); nothing to do.",
    ),
    "48001": tr(
        "公众号没有这个接口的权限（未认证或类型不符）：在公众平台检查账号权限。",
        "The account lacks permission for this API (not verified, or the wrong type).",
    ),
}

_PREFIX: tuple[tuple[str, Text], ...] = (
    (
        "device_",
        tr(
            "设备拒绝了指令：按错误说明检查设备，处理后重试。",
            "The device refused the command: check it as the error says, then retry.",
        ),
    ),
    (
        "edge",
        tr(
            "在线语音合成服务不可用：可把 VILLAGECAST_TTS_MODE 设为 offline（离线合成），"
            "然后重试。",
            "The online voice service failed: set VILLAGECAST_TTS_MODE=offline, then retry.",
        ),
    ),
)


def suggested_fix(code: str | None) -> Text:
    """The next step for a person, for a delivery's ``error_code`` (any code, even None)."""
    if code is None:
        return tr("查看错误说明，问题解决后点「重试」。", "Read the error; retry once it is fixed.")
    if code in _EXACT:
        return _EXACT[code]
    for prefix, text in _PREFIX:
        if code.startswith(prefix):
            return text
    return tr(
        "查看错误说明（代码 {code}），问题解决后点「重试」。",
        "Read the error (code {code}); retry once it is fixed.",
        code=code,
    )
