"""Who made this set: Ed25519 signatures over a ddkit file's identity, and the keys a team trusts.

The seal proves a file is intact, not who made it: anyone can edit a file and seal it again. A
signature says that the holder of one private key vouches for one set. What is signed is the
file's identity, the same two hashes `ddkit validate` checks:

    b"ddkit.signature.v1\\0" + FORMAT + b"\\0" + content_sha256 + b"\\0" + header_sha256

(the data of every dataset, and every header attribute). Result cards stay outside, as they stay
outside the content hash: `ddkit evaluate` may add a card to a signed file and the signature still
holds, while any change to the data or the header breaks it. A card therefore says only what its
writer claims; re-run `evaluate` on a signed set to trust a number.

The signature lives in the file's HDF5 user block, on the line after the seal
(`ddkit-sig v1 ed25519 PUBLIC_KEY SIGNATURE`, hex), where the seal does not cover it: signing
changes neither the seal, the content hash nor the header hash, and re-sealing keeps it.

Keys: `new_key_pair` writes a private key (PKCS#8 PEM, mode 0600) and `KEY.pub`, one line
`ed25519 PUBLIC_KEY NAME` to append to a team's trusted-keys file: one such line per trusted key,
`#` comments allowed. The trusted-keys file is `--trusted-keys PATH`, else `$DDKIT_TRUSTED_KEYS`,
else `~/.config/ddkit/trusted_keys`. The cryptography is the `cryptography` package's Ed25519.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ddkit.errors import DdkitError, FileFormatError, InvalidInput
from ddkit.fileio import atomic_output, attr_text, check_output
from ddkit.store.h5io import block_records, check_seal, open_store, read_block, replace_records, verify_content
from ddkit.store.results import STORE_FORMATS

DOMAIN = b"ddkit.signature.v1\0"
_RECORD = re.compile(rb"^ddkit-sig v1 ed25519 ([0-9a-f]{64}) ([0-9a-f]{128})$")
_KEY_LINE = re.compile(r"^ed25519\s+([0-9a-fA-F]{64})(?:\s+(.*))?$")
TRUSTED_KEYS_ENV = "DDKIT_TRUSTED_KEYS"


class SignatureRefused(DdkitError):
    """A file without a valid signature by a trusted key, where one is required."""


@dataclass(frozen=True)
class Signature:
    """A signature record: the signer's public key (hex) and the 64-byte signature."""

    public_key: str
    signature: bytes

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def record(self) -> bytes:
        return b"ddkit-sig v1 ed25519 " + self.public_key.encode() + b" " + self.signature.hex().encode()

    def to_dict(self) -> dict:
        return {"scheme": "ed25519", "public_key": self.public_key, "signature": self.signature.hex()}

    @classmethod
    def from_dict(cls, d: object, where: str = "signature") -> Signature:
        if not isinstance(d, dict) or d.get("scheme") != "ed25519":
            raise InvalidInput(f"{where} is not an ed25519 signature record")
        public, sig = d.get("public_key"), d.get("signature")
        if not (isinstance(public, str) and re.fullmatch(r"[0-9a-f]{64}", public)
                and isinstance(sig, str) and re.fullmatch(r"[0-9a-f]{128}", sig)):
            raise InvalidInput(f"{where}: public_key must be 64 and signature 128 lowercase hex digits")
        return cls(public, bytes.fromhex(sig))


@dataclass(frozen=True)
class Verified:
    """A signature that verified with a trusted key: who signed (the trusted-keys file's name for
    the key) and what (the file's identity)."""

    signer: str
    key_id: str
    content_sha256: str
    header_sha256: str


def key_id(public_key_hex: str) -> str:
    """A short name for a public key in messages: its first 16 hex digits."""
    return f"ed25519:{public_key_hex[:16]}"


def message(fmt: str, content_sha256: str, header_sha256: str) -> bytes:
    """The bytes a signature covers (see the module docstring)."""
    return DOMAIN + f"{fmt}\0{content_sha256}\0{header_sha256}".encode()


# -- keys -----------------------------------------------------------------------------------------


def _ed25519():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def new_key_pair(out: str | os.PathLike, name: str | None = None, overwrite: bool = False) -> tuple[Path, str]:
    """Write a new private key to `out` (PEM, readable by its owner only) and its public line to
    `out.pub`; returns (the .pub path, the public line to add to a trusted-keys file)."""
    from cryptography.hazmat.primitives import serialization

    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    for path in (out, pub):
        check_output(path, overwrite)
    private = _ed25519().Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    label = re.sub(r"\s+", "_", name.strip()) if name and name.strip() else out.stem
    line = f"ed25519 {public} {label}"
    with atomic_output(out, overwrite) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
    with atomic_output(pub, overwrite) as tmp:
        tmp.write_text(line + "\n")
    return pub, line


def load_private_key(path: str | os.PathLike):
    """The Ed25519 private key in the PEM file `path` (as `new_key_pair` writes it)."""
    from cryptography.hazmat.primitives import serialization

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read key {path} ({exc.strerror or exc})", "give the private key file") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{path} is not an unencrypted PEM private key ({str(exc)[:120]})",
                           "make one with `ddkit keys new --out KEY`") from None
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise InvalidInput(f"{path} holds a {type(key).__name__}, not an Ed25519 key",
                           "make one with `ddkit keys new --out KEY`")
    return key


def default_trusted_keys() -> Path:
    if os.environ.get(TRUSTED_KEYS_ENV):
        return Path(os.environ[TRUSTED_KEYS_ENV])
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "ddkit" / "trusted_keys"


def read_trusted_keys(path: str | os.PathLike | None = None) -> dict[str, str]:
    """public key (hex) -> name, from a trusted-keys file (lines `ed25519 HEX NAME`, `#` comments)."""
    path = Path(path) if path else default_trusted_keys()
    fix = f"list the keys you trust in {path}, one `ed25519 PUBLIC_KEY NAME` line each (the .pub file of a key)"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SignatureRefused(f"no trusted-keys file at {path}", fix) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SignatureRefused(f"cannot read the trusted-keys file {path} ({exc})", fix) from None
    keys: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _KEY_LINE.match(line)
        if not match:
            raise SignatureRefused(f"{path} line {number} is not `ed25519 PUBLIC_KEY NAME`", fix)
        public = match.group(1).lower()
        keys[public] = (match.group(2) or "").strip() or key_id(public)
    if not keys:
        raise SignatureRefused(f"the trusted-keys file {path} lists no key", fix)
    return keys


# -- signing and verifying files ------------------------------------------------------------------


def identity(path: str | os.PathLike) -> tuple[str, str, str]:
    """(format, content_sha256, header_sha256) of a ddkit file, after checking its seal and
    recomputing both hashes (a damaged or edited file is refused, never signed or trusted)."""
    check_seal(path, full=True)
    h5, fmt = open_store(path, STORE_FORMATS, verify=False)
    with h5:
        content = verify_content(h5, path)
        header = attr_text(h5.attrs["header_sha256"])
    return fmt, content, header


def read_signature(path: str | os.PathLike) -> Signature | None:
    """The signature record in the user block of `path`, or None when it has none."""
    for record in block_records(read_block(path)):
        match = _RECORD.match(record)
        if match:
            return Signature(match.group(1).decode(), bytes.fromhex(match.group(2).decode()))
        if record.startswith(b"ddkit-sig "):
            raise FileFormatError(f"{path} has a malformed signature record", "sign the file again")
    return None


def sign_file(path: str | os.PathLike, key: str | os.PathLike) -> Signature:
    """Sign the ddkit file `path` with the private key file `key` (replacing an earlier signature)."""
    private = load_private_key(key)
    fmt, content, header = identity(path)
    from cryptography.hazmat.primitives import serialization

    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    signature = Signature(public, private.sign(message(fmt, content, header)))
    others = [r for r in block_records(read_block(path)) if not r.startswith(b"ddkit-sig ")]
    replace_records(path, others + [signature.record()])
    return signature


def check_signature(signature: Signature | None, fmt: str, content: str, header: str, trusted: dict[str, str],
                    what: str) -> Verified:
    """Verify `signature` over the identity (fmt, content, header) with one of the `trusted` keys."""
    from cryptography.exceptions import InvalidSignature

    if signature is None:
        raise SignatureRefused(f"{what} is not signed", "ask its maker for a signed copy (`ddkit sign FILE --key K`)")
    if signature.public_key not in trusted:
        raise SignatureRefused(f"{what} is signed by {signature.key_id}, a key not in your trusted keys",
                               "add the signer's public key to your trusted-keys file if you trust it")
    public = _ed25519().Ed25519PublicKey.from_public_bytes(bytes.fromhex(signature.public_key))
    try:
        public.verify(signature.signature, message(fmt, content, header))
    except InvalidSignature:
        raise SignatureRefused(f"{what}: the signature by {trusted[signature.public_key]} ({signature.key_id}) does "
                               "not match the file's data and header: it was changed after signing",
                               "do not use it; ask its maker for a good copy") from None
    return Verified(trusted[signature.public_key], signature.key_id, content, header)


def verify_file(path: str | os.PathLike, trusted_keys: str | os.PathLike | None = None) -> Verified:
    """Refuse (SignatureRefused) a ddkit file not signed by a key in the trusted-keys file."""
    trusted = read_trusted_keys(trusted_keys)
    signature = read_signature(path)
    fmt, content, header = identity(path)
    return check_signature(signature, fmt, content, header, trusted, str(path))


def require_signature(path: str | os.PathLike, trusted_keys: str | os.PathLike | None = None) -> Verified:
    """`verify_file` for commands' `--require-signature` (a random subset is refused: no one signs it)."""
    if str(path).startswith("random:"):
        raise SignatureRefused(f"{path} is a random subset, which no one signs",
                               "drop --require-signature, or give a signed .ddk.h5 / .sel.h5 file")
    return verify_file(path, trusted_keys)
