"""Look inside a PDF as a reader would: pages, sizes, embedded fonts, text, the QR code."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

A4 = (595.28, 841.89)
A3 = (841.89, 1190.55)


def reader(data: bytes) -> PdfReader:
    return PdfReader(io.BytesIO(data))


def page_sizes(data: bytes) -> list[tuple[float, float]]:
    return [
        (round(float(p.mediabox.width), 2), round(float(p.mediabox.height), 2))
        for p in reader(data).pages
    ]


def texts(data: bytes) -> list[str]:
    """Each page's text, without the spaces and line breaks extraction puts in."""
    return ["".join((p.extract_text() or "").split()) for p in reader(data).pages]


def fonts(data: bytes) -> dict[str, bool]:
    """Base font name -> whether its program is embedded, over every page."""
    out: dict[str, bool] = {}
    for page in reader(data).pages:
        resources: Any = page.get("/Resources") or {}
        for ref in (resources.get("/Font") or {}).values():
            font = ref.get_object()
            descriptors = [font.get("/FontDescriptor")]
            for desc in font.get("/DescendantFonts") or []:
                descriptors.append(desc.get_object().get("/FontDescriptor"))
            embedded = any(
                d is not None
                and any(k in d.get_object() for k in ("/FontFile", "/FontFile2", "/FontFile3"))
                for d in descriptors
            )
            out[str(font.get("/BaseFont"))] = embedded
    return out


def qr_codes(data: bytes, *, page: int = 1, dpi: int = 150) -> list[str]:
    """Decode the QR codes on a page as a phone would see the print: rasterized by poppler,
    read by zxing-cpp (an independent decoder)."""
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed; `scripts/dev setup` installs it")
    import zxingcpp
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        pdf = Path(tmp) / "p.pdf"
        pdf.write_bytes(data)
        subprocess.run(
            [
                "pdftoppm",
                "-r",
                str(dpi),
                "-f",
                str(page),
                "-l",
                str(page),
                "-png",
                str(pdf),
                str(Path(tmp) / "page"),
            ],
            check=True,
        )
        (png,) = Path(tmp).glob("page*.png")
        with Image.open(png) as image:
            found = zxingcpp.read_barcodes(image)
    return [r.text for r in found if r.format == zxingcpp.BarcodeFormat.QRCode]
