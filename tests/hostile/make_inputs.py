"""Writes the hand-made hostile inputs of this folder (run from anywhere).

Each file is one input for a fuzz harness (tests/fuzz/harness.h); the
extension names the harness: .checkpoint, .weights, .config, .set_args. For
the checkpoint and weights harnesses the first byte is the mode: 1 a whole
file (no cairn checksums), 3 a bare pickle the harness wraps into a zip with
valid CRCs (so the bytes reach the pickle parser). test_hostile.cpp replays
every file here and requires a clean rejection. Inputs too large to keep in
git (a 200,000-key dict, nesting a million deep, a 100 KB scalar) are built by
the test itself.
"""
import io
import warnings
import os
import struct
import zipfile

warnings.simplefilter("ignore")  # zipfile warns about the duplicate record, on purpose
here = os.path.dirname(os.path.abspath(__file__))


def put(name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(here, name), "wb") as f:
        f.write(data)


P2 = b"\x80\x02"


def X(s):
    s = s.encode()
    return b"X" + struct.pack("<I", len(s)) + s


def J(i):
    return b"J" + struct.pack("<i", i)


def L1(i):  # LONG1, 8 bytes
    return b"\x8a\x08" + struct.pack("<q", i)


def storage(key, numel, kind="FloatStorage"):
    return b"((" + X("storage") + b"ctorch\n" + kind.encode() + b"\n" + X(str(key)) + X("cpu") + L1(numel) + b"tQ"


def tensor(storage_bytes, offset, sizes, strides):
    out = b"ctorch._utils\n_rebuild_tensor_v2\n" + storage_bytes + L1(offset)
    out += b"(" + b"".join(L1(s) for s in sizes) + b"t"
    out += b"(" + b"".join(L1(s) for s in strides) + b"t"
    out += b"\x89ccollections\nOrderedDict\n)RtR"
    return out


def state(*pairs):
    body = b"}("
    for k, v in pairs:
        body += X(k) + v
    return P2 + body + b"u."


# --- pickle: memo, sharing, nesting -----------------------------------------
# LONG_BINPUT with index 0xffffffff: the old reader resized its memo to 4 G entries.
put("memo-index-huge.weights", b"\x03" + P2 + b"]r\xff\xff\xff\xff.")
# A reference to a memo entry never stored.
put("memo-get-missing.weights", b"\x03" + P2 + b"]j\x10\x00\x00\x00.")
# 64 levels of [x, x] through memo references: 2^64 values if copied.
bomb = P2 + b"]q\x00"
for i in range(1, 64):
    bomb += b"](h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"eq" + bytes([i])
put("memo-bomb.weights", b"\x03" + bomb + b".")
# A list appended to itself.
put("list-contains-itself.weights", b"\x03" + P2 + b"]q\x00h\x00a.")
# A dict stored inside itself, as a value.
put("dict-contains-itself.weights", b"\x03" + P2 + b"}q\x00X\x01\x00\x00\x00ah\x00s.")
# Stack tricks: pops past a MARK, SETITEMS without a MARK, REDUCE on non-classes.
put("pop-past-mark.weights", b"\x03" + P2 + b"](a.")
put("setitems-no-mark.weights", b"\x03" + P2 + b"}u.")
put("reduce-non-class.weights", b"\x03" + P2 + b"K\x01)R.")
put("unknown-class.weights", b"\x03" + P2 + b"cos\nsystem\nX\x02\x00\x00\x00ls\x85R.")
put("unsupported-opcode.weights", b"\x03" + P2 + b"I1\n.")
put("dict-key-list.weights", b"\x03" + P2 + b"}]K\x01s.")

# --- tensors: storages, views, arithmetic ------------------------------------
# The harness's records data/0..15 hold 4096 bytes: 1024 floats.
put("storage-numel-huge.weights", b"\x03" + state(("w", tensor(storage(0, 1 << 61), 0, [4], [1]))))
put("storage-numel-negative.weights", b"\x03" + state(("w", tensor(storage(0, -5), 0, [4], [1]))))
put("storage-record-missing.weights", b"\x03" + state(("w", tensor(storage(99, 4), 0, [4], [1]))))
put("tensor-size-overflow.weights", b"\x03" + state(("w", tensor(storage(0, 16), 0, [1 << 62, 4], [4, 1]))))
put("tensor-stride-overflow.weights", b"\x03" + state(("w", tensor(storage(0, 16), 0, [2, 2], [1 << 62, 1 << 62]))))
put("tensor-past-storage.weights", b"\x03" + state(("w", tensor(storage(0, 16), 10, [16], [1]))))
put("tensor-offset-negative.weights", b"\x03" + state(("w", tensor(storage(0, 16), -8, [4], [1]))))
put("tensor-stride-negative.weights", b"\x03" + state(("w", tensor(storage(0, 16), 8, [4], [-1]))))
put("tensor-size-negative.weights", b"\x03" + state(("w", tensor(storage(0, 16), 0, [-4], [1]))))
put("tensor-expanded.weights", b"\x03" + state(("w", tensor(storage(0, 1), 0, [1 << 40], [0]))))
put("tensor-dims-mismatch.weights", b"\x03" + state(("w", tensor(storage(0, 16), 0, [4, 4], [1]))))
put("tensor-too-many-dims.weights", b"\x03" + state(("w", tensor(storage(0, 16), 0, [1] * 100, [1] * 100))))
put("storage-bad-type.weights", b"\x03" + state(("w", tensor(storage(0, 4, "EvilStorage"), 0, [4], [1]))))


# --- zip container -----------------------------------------------------------
def zip_bytes(records):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in records:
            z.writestr(name, data)
    return bytearray(buf.getvalue())


good_pickle = P2 + b"}X\x01\x00\x00\x00nK\x02s."
base = [("archive/data.pkl", good_pickle), ("archive/byteorder", b"little"), ("archive/version", b"3\n")]


def central(z, name):
    """Offset of the central directory entry of `name`."""
    i = z.find(b"PK\x01\x02" + b"\x00" * 0, 0)
    while i >= 0:
        n = struct.unpack_from("<H", z, i + 28)[0]
        if z[i + 46:i + 46 + n] == name.encode():
            return i
        i = z.find(b"PK\x01\x02", i + 4)
    raise KeyError(name)


z = zip_bytes(base)
c = central(z, "archive/data.pkl")
struct.pack_into("<II", z, c + 20, 0xFFFFFFF0, 0xFFFFFFF0)
put("zip-record-size-huge.checkpoint", b"\x01" + bytes(z))

z = zip_bytes(base)
c = central(z, "archive/data.pkl")
struct.pack_into("<I", z, c + 42, len(z) + 1000)
put("zip-record-offset-past-end.checkpoint", b"\x01" + bytes(z))

put("zip-duplicate-record.checkpoint", b"\x01" + bytes(zip_bytes(base + [("archive/data.pkl", good_pickle)])))

buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zz:
    for name, data in base:
        zz.writestr(name, data * 50)
put("zip-compressed.checkpoint", b"\x01" + buf.getvalue())

put("zip-outside-folder.checkpoint", b"\x01" + bytes(zip_bytes(base + [("../../etc/passwd", b"x")])))

z = zip_bytes(base)
end = z.rfind(b"PK\x05\x06")
struct.pack_into("<HH", z, end + 8, 60000, 60000)  # entry counts the directory cannot hold
put("zip-entry-count-huge.checkpoint", b"\x01" + bytes(z))

z = zip_bytes(base)
end = z.rfind(b"PK\x05\x06")
struct.pack_into("<I", z, end + 16, 0xFFFFFFFF)  # asks for a zip64 record that is not there
put("zip64-locator-missing.checkpoint", b"\x01" + bytes(z))

put("zip-truncated.checkpoint", b"\x01" + bytes(zip_bytes(base))[:-30])


def aliased_records(names, record_bytes, rename_local=False):
    """A torch.save-like zip whose central directory lists `names` records
    data/0..data/names-1, all pointing at the one local header of data/0 (a
    record of `record_bytes`): each name would load its own copy."""
    n = record_bytes // 4
    pkl = state(*[("w%d" % i, tensor(storage(i, n), 0, [n], [1])) for i in range(names)])
    z = zip_bytes([("archive/data.pkl", pkl), ("archive/data/0", b"\0" * record_bytes)] + base[1:])
    end = z.rfind(b"PK\x05\x06")
    dir_offset = struct.unpack_from("<I", z, end + 16)[0]
    entries = bytearray(z[dir_offset:end])
    c0 = central(z, "archive/data/0") - dir_offset
    fixed = bytes(entries[c0:c0 + 46])
    extra = bytearray()
    for i in range(1, names):
        name = ("archive/data/%d" % i).encode()
        e = bytearray(fixed)
        struct.pack_into("<HHH", e, 28, len(name), 0, 0)
        extra += e + name
    out = bytearray(z[:end]) + extra
    tail = bytearray(z[end:])
    total = struct.unpack_from("<H", tail, 10)[0] + names - 1
    struct.pack_into("<HHI", tail, 8, total, total, len(entries) + len(extra))
    return bytes(out + tail)


# 400 directory names for one 1 MiB record: 400 MiB of tensors from a 1.1 MB
# file (mostly zeros: git stores it in a few KB).
put("zip-records-alias-one-record.weights", b"\x01" + aliased_records(400, 1 << 20))
# The same, small enough to seed the fuzzers (they take inputs up to 64 KiB).
put("zip-records-alias-small.weights", b"\x01" + aliased_records(8, 4 << 10))
put("empty.checkpoint", b"")

# --- YAML experiments and --set ---------------------------------------------
put("alias-cycle.config", "a: &x [*x, *x]\nname: x\n")
put("alias-cycle-map.config", "a: &x {b: *x}\n")
laughs = "l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
for i in range(1, 9):
    laughs += "l%d: &l%d [%s]\n" % (i, i, ", ".join(["*l%d" % (i - 1)] * 10))
put("billion-laughs.config", laughs)
put("nesting-deep.config", "a: " + "[" * 5000 + "]" * 5000 + "\n")
put("nesting-deep-map.config", "a: " + "{b: " * 40 + "1" + "}" * 40 + "\n")
put("typo-and-missing.config", "name: x\ntrainr: {max_epochs: 1}\n")
put("key-not-scalar.config", "? [a, b]\n: 1\n")
put("binary-garbage.config", bytes(range(256)) * 4)

put("alias-cycle.set_args", "seed=&x [*x, *x]\n")
put("index-negative.set_args", "callbacks[-1].patience=2\n")
put("index-huge.set_args", "callbacks[99999999999999999999].patience=2\n")
put("path-deep.set_args", ".".join(["a"] * 100) + "=1\n")
put("value-deep.set_args", "trainer=" + "[" * 5000 + "]" * 5000 + "\n")
put("key-only.set_args", "=5\n")

# --- Data files read as training goes (the `data` harness) ------------------
# Mode byte: bit 0 clear = an image (bit 1: RGB), set = a .cshard file.
def png_chunk(kind, body):
    import zlib
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png(width, height, idat, colour=0):
    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def shard(count, x_dtype, y_dtype, x_dims, y_dims, header=None, data=b""):
    dims = b"".join(struct.pack("<Q", d) for d in list(x_dims) + list(y_dims))
    size = header if header is not None else (32 + len(dims) + 63) // 64 * 64
    head = b"CAIRNSHD" + struct.pack("<IIQBBBBI", 1, size, count, x_dtype, y_dtype, len(x_dims), len(y_dims), 0) + dims
    return head + b"\0" * max(0, size - len(head)) + data


import zlib  # noqa: E402
# A PNG header promising 2^30 x 2^30 pixels over a few bytes of data.
put("png-dimensions-huge.data", b"\x02" + png(1 << 30, 1 << 30, zlib.compress(b"\0" * 64)))
# A valid header, its pixel data cut short.
noisy_rows = bytes((i * 7919 + (i >> 3) * 31) % 251 if i % 65 else 0 for i in range(65 * 64))
put("png-data-truncated.data", b"\x00" + png(64, 64, zlib.compress(noisy_rows)[:len(zlib.compress(noisy_rows)) // 2]))
put("jpeg-header-only.data", b"\x02\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9")
put("image-neither.data", b"\x00GIF89a not an image cairn reads")
# Shards: an example count whose bytes overflow, a header larger than the file,
# a file cut short, an unknown dtype, a zero dimension.
put("shard-count-overflow.data", b"\x01" + shard((1 << 40), 8, 5, [1 << 20, 1 << 12], []))
put("shard-header-past-end.data", b"\x01" + shard(1, 7, 5, [4], [], header=1 << 20))
put("shard-truncated.data", b"\x01" + shard(10, 7, 5, [4], [], data=b"\0" * (10 * 16 + 10 * 8 - 3)))
put("shard-dtype-unknown.data", b"\x01" + shard(1, 42, 5, [4], [], data=b"\0" * 24))
put("shard-dimension-zero.data", b"\x01" + shard(1, 7, 5, [0], [], data=b""))
put("shard-not-a-shard.data", b"\x01" + b"PK\x03\x04 a zip, not a shard" + b"\0" * 40)
