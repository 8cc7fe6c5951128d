"""What pjsua2's Python API lacks, reached through pjsip's exported C API with ctypes.

Only one thing so far: advertising an extra option tag in ``Supported`` so
that INVITEs with ``Require: siprec`` (RFC 7866) are not answered 420 by
pjsip's own Require check.
"""

from __future__ import annotations

import ctypes

import pjsua2

PJSIP_H_SUPPORTED = 36  # enum pjsip_hdr_e in pjsip/sip_msg.h (2.15.1): the 37th entry, counted from PJSIP_H_ACCEPT


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


_keep: list = []  # the tag buffers must outlive the endpoint


def _lib() -> ctypes.CDLL:
    # The extension module exports the whole C API; dlopen returns the already-loaded copy, same globals.
    return ctypes.CDLL(pjsua2._pjsua2.__file__)


def add_supported(tag: str) -> None:
    """Add ``tag`` to the endpoint's Supported header. Call after libInit, on the pjsua thread."""
    lib = _lib()
    lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
    lib.pjsip_endpt_add_capability.restype = ctypes.c_int
    lib.pjsip_endpt_add_capability.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p,
    ]
    endpt = lib.pjsua_get_pjsip_endpt()
    if not endpt:
        raise RuntimeError("pjsua is not initialised")
    raw = tag.encode()
    buf = ctypes.create_string_buffer(raw)
    tags = (_PjStr * 1)(_PjStr(ctypes.cast(buf, ctypes.c_char_p), len(raw)))
    _keep.extend((buf, tags))
    status = lib.pjsip_endpt_add_capability(endpt, None, PJSIP_H_SUPPORTED, None, 1, ctypes.byref(tags))
    if status != 0:
        raise RuntimeError(f"pjsip_endpt_add_capability({tag!r}) failed: status {status}")
