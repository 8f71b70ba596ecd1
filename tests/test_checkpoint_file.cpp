// Checkpoint files: round trip, corruption detection, failed writes.
#include "support.h"

#include "../framework/core/src/zip_writer.h"
#include <zlib.h>

#include <sys/resource.h>

using cairn::Value;

namespace {
Value sample() {
  Value d = Value::dict();
  d.set("none", Value());
  d.set("true", true);
  d.set("false", false);
  d.set("small", int64_t{7});
  d.set("medium", int64_t{60000});
  d.set("neg", int64_t{-5});
  d.set("int32", int64_t{-2000000000});
  d.set("big", int64_t{1} << 50);
  d.set("min", INT64_MIN);
  d.set("pi", 3.141592653589793);
  d.set("nan", std::nan(""));
  d.set("negzero", -0.0);
  d.set("unicode", "Ωmega ✓");
  d.set(int64_t{3}, "int key");
  d.set("float", torch::arange(12, torch::kFloat32).reshape({3, 4}));
  d.set("double0d", torch::tensor(2.5, torch::kFloat64));
  d.set("bf16", torch::ones({5}, torch::kBFloat16));
  d.set("half", torch::full({2, 2}, 0.5, torch::kHalf));
  d.set("bool", torch::tensor({true, false, true}));
  d.set("long", torch::tensor({int64_t{1} << 40, int64_t{-3}}));
  d.set("empty", torch::empty({0, 3}));
  d.set("noncontig", torch::arange(6, torch::kFloat32).reshape({2, 3}).t());
  Value l = Value::list();
  for (int i = 0; i < 2500; ++i) l.push_back(static_cast<double>(i) / 7.0);  // > 1000 items: batched APPENDS
  d.set("list", l);
  Value nested = Value::dict();
  nested.set("inner", Value(std::vector<int64_t>{1, 2, 3}));
  d.set("nested", nested);
  return d;
}
}  // namespace

TEST_CASE("a checkpoint file round-trips every kind of value exactly") {
  test::TempDir dir("ckpt_roundtrip");
  const Value v = sample();
  const auto stats = cairn::write_checkpoint(dir / "a.ckpt", v);
  CHECK(stats.bytes > 0);
  CHECK(stats.bytes == test::fs::file_size(dir / "a.ckpt"));
  const Value back = cairn::read_checkpoint(dir / "a.ckpt");
  CHECK_MESSAGE(v.first_difference(back) == "", v.first_difference(back));
  CHECK(back.at(int64_t{3}).to_string() == "int key");
  CHECK(back.at("noncontig").to_tensor().equal(torch::arange(6, torch::kFloat32).reshape({2, 3}).t()));
  CHECK(!test::fs::exists(dir / "a.ckpt.tmp"));
}

TEST_CASE("Value equality notices a single changed bit") {
  Value a = sample();
  Value b = sample();
  CHECK(a.equals(b));
  b.at("float").to_tensor().data_ptr<float>()[5] = std::nextafter(5.0f, 6.0f);
  CHECK(!a.equals(b));
  CHECK(a.first_difference(b) == "float: tensors differ");
}

TEST_CASE("corrupt checkpoints are detected, never loaded half-way") {
  test::TempDir dir("ckpt_corrupt");
  const std::string good = dir / "good.ckpt";
  cairn::write_checkpoint(good, sample());
  const std::string bytes = test::read_file(good);
  REQUIRE(bytes.size() > 1000);

  SUBCASE("truncated") {
    test::write_file(dir / "bad.ckpt", bytes.substr(0, bytes.size() / 2));
    REQUIRE(test::fs::file_size(dir / "bad.ckpt") == bytes.size() / 2);
  }
  SUBCASE("one flipped bit inside the pickled data") {
    std::string b = bytes;
    const auto pos = b.find("Ωmega");
    REQUIRE(pos != std::string::npos);
    b[pos + 3] = static_cast<char>(b[pos + 3] ^ 0x01);  // "Ωmega" -> "Ωmfga"
    test::write_file(dir / "bad.ckpt", b);
  }
  SUBCASE("one flipped bit inside tensor bytes") {
    std::string b = bytes;
    // The int64 tensor holds 1<<40: bytes 00 00 00 00 00 01 00 00.
    const auto pos = b.find(std::string("\x00\x00\x00\x00\x00\x01\x00\x00\xfd\xff", 10));
    REQUIRE(pos != std::string::npos);
    b[pos + 5] = 0x03;
    test::write_file(dir / "bad.ckpt", b);
  }
  SUBCASE("empty file") {
    test::write_file(dir / "bad.ckpt", "");
    REQUIRE(test::fs::file_size(dir / "bad.ckpt") == 0);
  }
  SUBCASE("not a checkpoint") {
    test::write_file(dir / "bad.ckpt", "epoch,step\n1,2\n");
    REQUIRE(test::fs::file_size(dir / "bad.ckpt") == 15);
  }
  SUBCASE("a zip without cairn's checksums") {
    // A Python-style file is readable as weights but is not a resumable checkpoint.
    auto r = test::python("save_state_dict.py", {dir / "bad.ckpt", "plain"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  }
  CHECK_THROWS_AS(cairn::read_checkpoint(dir / "bad.ckpt"), cairn::CheckpointError);
  try {
    cairn::read_checkpoint(dir / "bad.ckpt");
  } catch (const cairn::CheckpointError& e) {
    CHECK(std::string(e.what()).find("bad.ckpt") != std::string::npos);
  }
  // The good file still reads.
  CHECK(cairn::read_checkpoint(good).equals(sample()));
}

TEST_CASE("every single-byte flip in a small checkpoint is detected or harmless") {
  test::TempDir dir("ckpt_flips");
  Value v = Value::dict();
  v.set("w", torch::arange(64, torch::kFloat32));
  v.set("step", int64_t{12});
  cairn::write_checkpoint(dir / "a.ckpt", v);
  const std::string bytes = test::read_file(dir / "a.ckpt");
  int detected = 0, harmless = 0;
  for (size_t i = 0; i < bytes.size(); i += 7) {
    std::string b = bytes;
    b[i] = static_cast<char>(b[i] ^ 0x01);
    test::write_file(dir / "b.ckpt", b);
    try {
      const Value back = cairn::read_checkpoint(dir / "b.ckpt");
      // Bytes outside any record (zip padding, unused header fields) may change nothing.
      REQUIRE_MESSAGE(back.equals(v), "byte " << i << " changed the content without being detected");
      ++harmless;
    } catch (const cairn::CheckpointError&) {
      ++detected;
    }
  }
  CHECK(detected > 0);
  MESSAGE(detected << " flips detected, " << harmless << " harmless");
}

TEST_CASE("a write that hits a file-size limit fails cleanly and keeps the previous file") {
  test::TempDir dir("ckpt_fsize");
  const std::string path = dir / "last.ckpt";
  Value small = Value::dict();
  small.set("w", torch::ones({16}));
  cairn::write_checkpoint(path, small);
  const std::string before = test::read_file(path);

  Value big = Value::dict();
  big.set("w", torch::ones({1 << 20}));  // 4 MiB
  struct rlimit old {};
  ::getrlimit(RLIMIT_FSIZE, &old);
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = 1 << 20;  // 1 MiB: a "full disk" for this process
  REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
  std::string message;
  try {
    cairn::write_checkpoint(path, big);
  } catch (const cairn::CheckpointWriteError& e) {
    message = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  CHECK(message.find("failed") != std::string::npos);
  CHECK(message.find("intact") != std::string::npos);
  CHECK(test::read_file(path) == before);
  CHECK(cairn::read_checkpoint(path).equals(small));
  CHECK(!test::fs::exists(path + ".tmp"));
}

TEST_CASE("a write into a path that cannot be a directory fails with a clear error") {
  test::TempDir dir("ckpt_unwritable");
  test::write_file(dir / "blocker", "a file where a folder should be");
  Value v = Value::dict();
  v.set("x", int64_t{1});
  CHECK_THROWS_AS(cairn::write_checkpoint(dir / "blocker/sub/last.ckpt", v), cairn::CheckpointWriteError);
}

TEST_CASE("atomic_link replaces the target with the source's content") {
  test::TempDir dir("ckpt_link");
  Value a = Value::dict();
  a.set("v", int64_t{1});
  Value b = Value::dict();
  b.set("v", int64_t{2});
  cairn::write_checkpoint(dir / "a.ckpt", a);
  cairn::write_checkpoint(dir / "b.ckpt", b);
  cairn::atomic_link(dir / "a.ckpt", dir / "b.ckpt");
  CHECK(cairn::read_checkpoint(dir / "b.ckpt").at("v").to_int() == 1);
}

TEST_CASE("a flipped bit in a large tensor (hashed on a helper thread) is detected too") {
  test::TempDir dir("ckpt_big_flip");
  Value v = Value::dict();
  v.set("big", torch::arange(3 << 20, torch::kFloat32));  // 12 MiB: over the parallel-hash threshold
  cairn::write_checkpoint(dir / "a.ckpt", v);
  CHECK(cairn::read_checkpoint(dir / "a.ckpt").equals(v));
  std::string b = test::read_file(dir / "a.ckpt");
  b[b.size() / 2] = static_cast<char>(b[b.size() / 2] ^ 0x04);
  test::write_file(dir / "b.ckpt", b);
  CHECK_THROWS_WITH_AS(cairn::read_checkpoint(dir / "b.ckpt"), doctest::Contains("checksum mismatch in record data/0"),
                       cairn::CheckpointError);
}

TEST_CASE("the zip64 layout (files over 4 GiB) is read by cairn and by Python's torch.load") {
  // Small records with every zip64 field forced: the layout a >4 GiB checkpoint gets.
  test::TempDir dir("zip64");
  cairn::Value root = cairn::Value::dict();
  root.set("w", torch::arange(0, 1000, torch::kFloat));
  root.set("step", int64_t{7});
  std::vector<at::Tensor> tensors;
  const std::string pkl = cairn::pickle::dumps(root, &tensors);
  const std::string path = dir / "big.pt";
  {
    std::ofstream out(path, std::ios::binary);
    cairn::zip::ZipWriter w(
        [&out](const void* p, size_t n) {
          out.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
          return static_cast<bool>(out);
        },
        "archive", /*force_zip64=*/true);
    REQUIRE(w.add("data.pkl", pkl));
    REQUIRE(w.add("byteorder", std::string("little")));
    for (size_t i = 0; i < tensors.size(); ++i) {
      const at::Tensor t = tensors[i].contiguous();
      const size_t n = static_cast<size_t>(t.numel()) * t.element_size();
      REQUIRE(w.add("data/" + std::to_string(i), t.data_ptr(), n, cairn::zip::crc32(t.data_ptr(), n)));
    }
    REQUIRE(w.add("version", std::string("3\n")));
    REQUIRE(w.finish());
  }
  cairn::ReadOptions ro;
  ro.require_checksum = false;
  const cairn::Value back = cairn::read_checkpoint(path, ro);
  CHECK(back.equals(root));
  auto py = test::run({CAIRN_PYTHON, "-c",
                       "import sys, zipfile, torch\n"
                       "z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None\n"
                       "assert all(i.file_size < 2**32 for i in z.infolist())\n"
                       "d = torch.load(sys.argv[1])\n"
                       "assert d['step'] == 7 and torch.equal(d['w'], torch.arange(0, 1000, dtype=torch.float))\n"
                       "print('zip64 ok')",
                       path});
  CHECK_MESSAGE(py.output.find("zip64 ok") != std::string::npos, py.output);
}

TEST_CASE("the zip CRC-32 (ISA-L) equals zlib's crc32 at every length and alignment, and Python's") {
  std::vector<unsigned char> buf(9u << 20);
  for (size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<unsigned char>((i * 2654435761u) >> 13);
  // Short lengths from every start modulo 64 cover the folding code's head and tail paths.
  int mismatches = 0;
  for (size_t start = 0; start < 64; ++start) {
    for (size_t n = 0; n < 300; ++n) {
      if (cairn::zip::crc32(buf.data() + start, n) != ::crc32(0L, buf.data() + start, static_cast<uInt>(n))) ++mismatches;
    }
  }
  CHECK(mismatches == 0);
  const uint32_t whole = cairn::zip::crc32(buf.data(), buf.size());
  CHECK(whole == ::crc32(0L, buf.data(), static_cast<uInt>(buf.size())));
  // Python's zlib.crc32 of the same bytes, as an independent reference.
  auto py = test::run({CAIRN_PYTHON, "-c",
                       "import zlib\nb = bytes(((i * 2654435761) % 2**32) >> 13 & 255 for i in range(9 << 20))\n"
                       "print('%08x' % zlib.crc32(b))"});
  char hex[16];
  std::snprintf(hex, sizeof hex, "%08x", whole);
  CHECK(py.output.find(hex) != std::string::npos);
  CHECK(cairn::zip::crc32(buf.data(), 0) == 0u);
}

TEST_CASE("atomic_link over a name that already links the same file leaves no temp file") {
  test::TempDir dir("relink");
  test::write_file(dir / "a.ckpt", "x");
  cairn::atomic_link(dir / "a.ckpt", dir / "b.ckpt");
  cairn::atomic_link(dir / "a.ckpt", dir / "b.ckpt");  // rename(2) is a no-op between links of one file
  int tmp = 0;
  for (const auto& e : test::fs::directory_iterator(dir.path)) tmp += e.path().extension() == ".tmp";
  CHECK(tmp == 0);
  CHECK(test::read_file(dir / "b.ckpt") == "x");
}

// Direct I/O (file_io.h): on a real block device, with its alignment rules and
// its ENOSPC. The loop-mounted ext4 needs root; CI runs as root.
namespace {
//! A checkpoint whose one large record ends within the file's last 4 KiB, so
//! a direct read of it asks for a block past the end of the file.
Value one_large_record(int64_t bytes, int seed) {
  Value d = Value::dict();
  d.set("step", int64_t{seed});
  d.set("w", torch::randint(0, 256, {bytes}, torch::TensorOptions().dtype(torch::kUInt8)).add_(seed));
  return d;
}
bool zip_crcs_ok(const std::string& path) {  // Python's zipfile checks every record's CRC-32 and size
  auto r = test::run({CAIRN_PYTHON, "-c", "import sys, zipfile\nassert zipfile.ZipFile(sys.argv[1]).testzip() is None\nprint('zip ok')", path});
  return r.output.find("zip ok") != std::string::npos;
}
#define NEEDS_ROOT_DISK(disk)                                                            \
  if (!(disk).mounted()) {                                                               \
    MESSAGE("not root: cannot loop-mount an ext4 image here; this case runs in CI (root)"); \
    CHECK(::geteuid() != 0);                                                             \
    return;                                                                              \
  }
}  // namespace

TEST_CASE("on a block filesystem checkpoints are written with O_DIRECT and read back bit for bit, direct or not") {
  test::TempDir dir("direct");
  test::LoopDisk disk(dir / "disk", 64l << 20);
  NEEDS_ROOT_DISK(disk);
  const std::string path = disk.dir + "/a.ckpt";
  torch::manual_seed(1);
  const Value v = one_large_record((5 << 20) + 3, 1);
  const auto stats = cairn::write_checkpoint(path, v);
  CHECK(stats.direct_io);
  CHECK(test::fs::file_size(path) == stats.bytes);  // the last block's padding was cut off
  CHECK(zip_crcs_ok(path));
  cairn::ReadOptions direct, buffered;
  buffered.direct_io = false;
  CHECK(cairn::read_checkpoint(path, direct).first_difference(v) == "");
  CHECK(cairn::read_checkpoint(path, buffered).first_difference(v) == "");
  // Many records, large and small, through several 8 MiB stages.
  Value s = sample();
  s.set("a", torch::randn({3 << 20}));
  s.set("b", torch::randn({(1 << 18) + 1}, torch::kFloat64));
  const auto st2 = cairn::write_checkpoint(path, s);
  CHECK(st2.direct_io);
  CHECK(test::fs::file_size(path) == st2.bytes);
  CHECK(cairn::read_checkpoint(path, direct).first_difference(s) == "");
  CHECK(zip_crcs_ok(path));
  // Turned off: through the page cache, the same bytes.
  cairn::WriteOptions off;
  off.direct_io = false;
  CHECK_FALSE(cairn::write_checkpoint(disk.dir + "/b.ckpt", s, off).direct_io);
  ::setenv("CAIRN_DIRECT_IO", "0", 1);
  const auto st3 = cairn::write_checkpoint(disk.dir + "/c.ckpt", s);
  ::unsetenv("CAIRN_DIRECT_IO");
  CHECK_FALSE(st3.direct_io);
  CHECK(test::read_file(disk.dir + "/b.ckpt") == test::read_file(path));
  CHECK(test::read_file(disk.dir + "/c.ckpt") == test::read_file(path));
}

TEST_CASE("a device that refuses a direct write mid-file gets the rest through the page cache, and the file is whole") {
  test::TempDir dir("direct-fallback");
  test::LoopDisk disk(dir / "disk", 64l << 20);
  NEEDS_ROOT_DISK(disk);
  const std::string path = disk.dir + "/a.ckpt";
  torch::manual_seed(2);
  const Value v = one_large_record((9 << 20) + 100, 2);  // one full 8 MiB stage, then a tail
  cairn::WriteOptions odd;
  odd.direct_io_block = 64;  // the tail goes out padded to 64 bytes, which a 512-byte-sector device refuses
  const auto stats = cairn::write_checkpoint(path, v, odd);
  CHECK_FALSE(stats.direct_io);  // it fell back
  CHECK(test::fs::file_size(path) == stats.bytes);
  CHECK(zip_crcs_ok(path));
  CHECK(cairn::read_checkpoint(path).first_difference(v) == "");
}

TEST_CASE("a full block filesystem fails a direct write with ENOSPC and keeps the previous checkpoint") {
  test::TempDir dir("direct-full");
  test::LoopDisk disk(dir / "disk", 40l << 20);
  NEEDS_ROOT_DISK(disk);
  const std::string path = disk.dir + "/last.ckpt";
  torch::manual_seed(3);
  const Value small = one_large_record(10 << 20, 3);
  REQUIRE(cairn::write_checkpoint(path, small).direct_io);
  const std::string before = test::read_file(path);
  bool no_space = false;
  std::string what;
  try {
    cairn::write_checkpoint(path, one_large_record(40 << 20, 4));
  } catch (const cairn::CheckpointWriteError& e) {
    no_space = e.no_space();
    what = e.what();
  }
  CHECK_MESSAGE(no_space, what);
  CHECK(what.find("previous file, if any, is intact") != std::string::npos);
  CHECK(test::read_file(path) == before);
  CHECK(cairn::read_checkpoint(path).first_difference(small) == "");
  size_t files = 0;
  for (const auto& e : test::fs::directory_iterator(disk.dir)) files += e.path().filename() != "lost+found";
  CHECK(files == 1);  // no temp file left behind
}
