"""Reading what spotgen (and SD WebUI) embed in an image: its generation parameters.

``read_parameters`` reads all three output formats, the way WebUI's ``read_info_from_image`` does: the PNG
``parameters`` text chunk, else EXIF UserComment (WebP, JPEG) with its 8-byte character-code prefix. It works
on WebUI's own images too. Pillow is needed (imported when called, so ``import spotgen`` stays light).
"""

from __future__ import annotations

import io

from runtime.contract.formats import EXIF_IFD_TAG, USER_COMMENT_TAG

#: UserComment's character codes (EXIF 2.3, and piexif's ``UserComment.load``): prefix -> Python codec.
_CODES = {b"UNICODE\x00": "utf-16-be", b"ASCII\x00\x00\x00": "ascii", b"JIS\x00\x00\x00\x00\x00": "shift_jis"}

__all__ = ["read_parameters"]


def read_parameters(data: bytes) -> str | None:
    """The parameters text embedded in an image's bytes (spotgen writes JSON; WebUI its infotext), or None when
    it has none. ``ValueError`` when the bytes are not an image Pillow can open."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ValueError(f"not an image: {exc}") from None
    text = image.info.get("parameters")
    if isinstance(text, str):
        return text
    comment = image.getexif().get_ifd(EXIF_IFD_TAG).get(USER_COMMENT_TAG) if "exif" in image.info else None
    if not comment:
        return None
    if isinstance(comment, str):  # Pillow decodes some UserComments itself
        return comment or None
    codec = _CODES.get(bytes(comment[:8]))
    # WebUI: what piexif cannot load is read as UTF-8, ignoring errors
    text = bytes(comment[8:]).decode(codec, errors="replace") if codec else bytes(comment).decode("utf-8", "ignore")
    return text or None
