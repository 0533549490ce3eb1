"""What a failed host or sandbox command's output says: whether trying again may help
(the network, a busy server) and, for a build that needs a system package, which one.

Agents retry only what :func:`is_transient` recognises; everything else fails at once
with what to do, rather than the same deterministic error three times.
"""

from __future__ import annotations

import re

TRANSIENT = re.compile(
    "|".join(
        (
            r"could not resolve host",
            r"temporary failure in name resolution",
            r"name or service not known",
            r"connection (?:timed out|reset|refused|closed)",
            r"operation timed out",
            r"read timed out",
            r"network is unreachable",
            r"the remote end hung up unexpectedly",
            r"early eof",
            r"rpc failed",
            r"gnutls_handshake\(\) failed",
            r"ssl_(?:read|connect|error)",
            r"\b(?:502|503|504) (?:bad gateway|service unavailable|gateway time-?out)",
            r"\b(?:429 )?too many requests",
            r"max retries exceeded",
            r"\b(?:econnreset|etimedout|eai_again|econnrefused|enetunreach)\b",
            r"index\.lock': file exists",
            r"unable to create .*\.lock",
        )
    ),
    re.IGNORECASE,
)

# (what the output says, the Debian package that provides it)
SYSTEM_PACKAGES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), package)
    for pattern, package in (
        (r"\bPython\.h: No such file", "python3-dev"),
        (r"\bffi\.h: No such file", "libffi-dev"),
        (r"\bopenssl/\w+\.h: No such file", "libssl-dev"),
        (r"\blibxml/\w+\.h: No such file|xml2-config", "libxml2-dev"),
        (r"\blibxslt/\w+\.h: No such file|xslt-config", "libxslt1-dev"),
        (r"\bzlib\.h: No such file", "zlib1g-dev"),
        (r"\bjpeglib\.h: No such file", "libjpeg-dev"),
        (r"\byaml\.h: No such file", "libyaml-dev"),
        (r"\bsqlite3\.h: No such file", "libsqlite3-dev"),
        (r"\bbzlib\.h: No such file", "libbz2-dev"),
        (r"\blzma\.h: No such file", "liblzma-dev"),
        (r"\bpg_config\b.*not found|\blibpq-fe\.h: No such file", "libpq-dev"),
        (r"\bmysql_config\b.*not found", "default-libmysqlclient-dev"),
        (r"\bkrb5-config\b.*not found", "libkrb5-dev"),
        (r"\bpkg-config\b.*not found", "pkg-config"),
        (r"\bgfortran\b.*(?:not found|No such file)", "gfortran"),
        (r"can't find Rust compiler|\bcargo\b.*not found", "rustc cargo"),
        (
            r"unable to execute '(?:gcc|cc|x86_64-linux-gnu-gcc)'"
            r"|command '(?:gcc|cc|x86_64-linux-gnu-gcc)' failed"
            r"|\b(?:gcc|cc|g\+\+|c\+\+|make): (?:command )?not found"
            r"|C compiler cannot create executables|no acceptable C compiler",
            "build-essential",
        ),
    )
)


def is_transient(output: str) -> bool:
    """Whether a failed command's output points at something passing (network, load)."""
    return TRANSIENT.search(output) is not None


def missing_system_package(output: str) -> str | None:
    """The Debian package a failed build's output says is missing, if it names one."""
    for pattern, package in SYSTEM_PACKAGES:
        if pattern.search(output):
            return package
    return None


def build_hint(output: str) -> str | None:
    """One sentence on what to do about a failed install, when its output says."""
    package = missing_system_package(output)
    if package is None:
        return None
    return (
        f"The build needs a system package that is not installed: install it on the host "
        f"(the sandbox uses the host's system files), e.g. `sudo apt-get install {package}`, "
        "then run the hunt again."
    )
