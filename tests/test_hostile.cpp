// Hostile input: every reader of untrusted bytes (checkpoints, torch.save
// weight files, YAML experiments, --set) answers with its documented error,
// never a crash, a hang or memory far beyond the input's size.
//
// Replays tests/hostile/ (hand-made inputs, and every input the fuzzers of
// tests/fuzz/ ever crashed on) through the fuzz harness, each in a child
// process so that a crash is a failed check, not a dead test binary; the child
// reports its memory growth and time, printed as a table.
#include "fuzz/harness.h"
#include "support.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <sys/stat.h>

namespace {

using cairn::fuzz::Outcome;
using cairn::fuzz::Result;

struct Run {
  bool finished = false;   //!< the child exited normally
  int exit_code = -1;
  int signal = 0;
  Outcome outcome = Outcome::accepted;
  long rss_growth_kb = 0;  //!< peak RSS minus RSS at the start
  double seconds = 0.0;
  std::string message;
};

long rss_kb() {
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

Result dispatch(const std::string& kind, const std::string& bytes) {
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  if (kind == "checkpoint") return cairn::fuzz::checkpoint(p, bytes.size());
  if (kind == "weights") return cairn::fuzz::weights(p, bytes.size());
  if (kind == "config") return cairn::fuzz::config(p, bytes.size());
  if (kind == "set_args") return cairn::fuzz::set_args(p, bytes.size());
  if (kind == "state") return cairn::fuzz::state(p, bytes.size());
  if (kind == "data") return cairn::fuzz::data(p, bytes.size());
  if (kind == "state_nodes") {  // the base checkpoint's node count, once its unchanged resume was accepted
    const Result r = cairn::fuzz::state(p, 0);
    const size_t n = cairn::fuzz::state_nodes();
    cairn::fuzz::state_cleanup();
    if (r.outcome != Outcome::accepted) throw std::runtime_error("the base checkpoint was rejected: " + r.message);
    return {Outcome::accepted, std::to_string(n)};
  }
  if (kind == "state_sweep") {  // one mutation at a time, each 4 bytes of `bytes`
    size_t rejected = 0, runs = 0;
    for (size_t i = 0; i + 4 <= bytes.size(); i += 4, ++runs) {
      if (std::getenv("CAIRN_STATE_TRACE")) {  // which node a crash happened on
        std::fprintf(stderr, "state node %s op %d\n", cairn::fuzz::state_node_name(static_cast<size_t>(p[i] << 8 | p[i + 1])).c_str(), p[i + 2]);
      }
      try {
        rejected += cairn::fuzz::state(p + i, 4).outcome == Outcome::rejected;
      } catch (const std::exception& e) {
        const size_t node = static_cast<size_t>(p[i] << 8 | p[i + 1]);
        cairn::fuzz::state_cleanup();
        throw std::runtime_error("node " + std::to_string(node) + " " + cairn::fuzz::state_node_name(node) + ", op " + std::to_string(p[i + 2]) +
                                 " arg " + std::to_string(p[i + 3]) + ": " + e.what());
      }
    }
    cairn::fuzz::state_cleanup();
    return {Outcome::accepted, std::to_string(rejected) + " of " + std::to_string(runs) + " rejected"};
  }
  throw std::runtime_error("unknown harness " + kind);
}

//! Feeds `bytes` to one harness in a child process, limited to 60 s of CPU time.
Run isolated(const std::string& kind, const std::string& bytes) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    // 60 s of CPU time (not of wall time: a loaded machine must not fail it).
    struct rlimit cpu {60, 61};
    ::setrlimit(RLIMIT_CPU, &cpu);
    const long before = rss_kb();
    const auto t0 = std::chrono::steady_clock::now();
    std::string line;
    try {
      const Result r = dispatch(kind, bytes);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      struct rusage ru {};
      ::getrusage(RUSAGE_SELF, &ru);
      line = std::to_string(r.outcome == Outcome::rejected ? 1 : 0) + " " + std::to_string(ru.ru_maxrss - before) +
             " " + std::to_string(s) + " " + r.message.substr(0, 2000);
    } catch (const std::exception& e) {
      line = std::string("X 0 0 unexpected exception: ") + e.what();
    }
    cairn::fuzz::remove_scratch();
    ssize_t ignored = ::write(fds[1], line.data(), line.size());
    (void)ignored;
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  Run r;
  r.finished = WIFEXITED(status);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  std::istringstream is(out);
  std::string flag;
  is >> flag >> r.rss_growth_kb >> r.seconds;
  std::getline(is, r.message);
  if (!r.message.empty() && r.message[0] == ' ') r.message.erase(0, 1);
  if (flag == "X") {
    r.finished = false;
  } else {
    r.outcome = flag == "1" ? Outcome::rejected : Outcome::accepted;
  }
  if (out.empty()) r.finished = false;
  if (flag == "X" || out.empty()) r.message = out.empty() ? "no report (crashed?)" : r.message;
  return r;
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

#if defined(__SANITIZE_ADDRESS__)
#define CAIRN_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CAIRN_TEST_ASAN 1
#endif
#endif

//! Memory a rejected input may cost: a fixed allowance (allocator arenas,
//! torch's first tensor ops) plus a multiple of its size. Object-dense
//! pickles (a 200,000-key dict) decode to about 40 bytes of node and ~110
//! bytes of Value per pickle opcode; tensor data is read 1:1. Under
//! AddressSanitizer, redzones and its 256 MB quarantine of freed memory
//! count too, so the bound there is looser.
long memory_bound_kb(size_t input_bytes) {
#ifdef CAIRN_TEST_ASAN
  return 300 * 1024 + static_cast<long>(input_bytes / 1024) * 200;
#else
  return 64 * 1024 + static_cast<long>(input_bytes / 1024) * 64;
#endif
}

//! Runs one input isolated and prints its line of the table.
Run replay(const std::string& name, const std::string& kind, const std::string& bytes) {
  const Run r = isolated(kind, bytes);
  std::printf("  %-40s %9zu B  %6.3f s  %+8ld KB  %s\n", name.c_str(), bytes.size(), r.seconds, r.rss_growth_kb,
              first_line(r.message).substr(0, 110).c_str());
  return r;
}

std::string hostile_dir() { return std::string(CAIRN_SOURCE_DIR) + "/tests/hostile"; }

std::string le32(uint32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); }

}  // namespace

TEST_CASE("every input in tests/hostile/ is rejected with cairn's own error, in bounded memory") {
  std::vector<test::fs::path> files;
  for (const auto& e : test::fs::recursive_directory_iterator(hostile_dir())) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file() && ext != ".py" && ext != ".md") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() >= 40);
  std::printf("hostile inputs: name, size, time, peak RSS growth, error\n");
  for (const auto& f : files) {
    const std::string kind = f.extension().string().substr(1);
    // Inputs the fuzzers found (found/) may be valid; they must not crash.
    const bool found = f.parent_path().filename() == "found";
    const std::string name = (found ? "found/" : "") + f.filename().string();
    const std::string bytes = test::read_file(f.string());
    CAPTURE(name);
    const Run r = replay(name, kind, bytes);
    CAPTURE(r.message);
    CAPTURE(r.signal);
    REQUIRE(r.finished);
    CHECK(r.exit_code == 0);
    if (!found) CHECK(r.outcome == Outcome::rejected);
    CHECK(r.rss_growth_kb <= memory_bound_kb(bytes.size()));
  }
}

TEST_CASE("large hostile inputs stay linear and bounded") {
  struct Large {
    std::string name, kind, bytes, expected;  //!< expected: a piece of the error
  };
  std::vector<Large> inputs;
  // A dict of 200,000 distinct keys (SETITEMS): quadratic before, linear now;
  // read fine, then refused as not the model's state dict.
  {
    std::string p = "\x03\x80\x02}(";
    for (int i = 0; i < 200000; ++i) {
      const std::string k = "k" + std::to_string(i);
      p += "X" + le32(static_cast<uint32_t>(k.size())) + k + "K\x01";
    }
    p += "u.";
    inputs.push_back({"dict-200000-keys.weights", "weights", p, "the weights do not match the model"});
  }
  // A million nested lists: the depth limit, not the stack, ends it.
  inputs.push_back({"nesting-1000000.weights", "weights",
                    "\x03\x80\x02" + std::string(1000000, ']') + std::string(999999, 'a') + ".",
                    "nesting deeper than 256 levels"});
  // A million MARKs and a million empty tuples on the stack, never closed.
  inputs.push_back({"marks-1000000.weights", "weights",
                    "\x03\x80\x02" + std::string(1000000, '(') + std::string(1000000, ')') + ".",
                    "does not hold a dict of tensors"});
  // A 100 KB scalar and 100,000-deep flow nesting in YAML, and the scalar through --set.
  inputs.push_back({"scalar-100KB.config", "config", "name: " + std::string(100000, 'x') + "\n",
                    "a value of 100000 bytes"});
  inputs.push_back({"nesting-100000.config", "config",
                    "a: " + std::string(100000, '[') + std::string(100000, ']') + "\n",
                    "nesting deeper than the YAML parser allows"});
  inputs.push_back({"scalar-100KB.set_args", "set_args", "name=" + std::string(100000, 'x') + "\n",
                    "a value of 100000 bytes"});

  // 400 central-directory names aliasing one 1 MiB record (made by
  // make_inputs.py): each name would have loaded its own 1 MiB.
  inputs.push_back({"zip-records-alias-one-record.weights", "weights",
                    test::read_file(hostile_dir() + "/zip-records-alias-one-record.weights"),
                    "the local header names another record"});

  std::printf("large hostile inputs:\n");
  for (const auto& in : inputs) {
    CAPTURE(in.name);
    const Run r = replay(in.name, in.kind, in.bytes);
    CAPTURE(r.message);
    CAPTURE(r.signal);
    REQUIRE(r.finished);
    CHECK(r.exit_code == 0);
    CHECK(r.outcome == Outcome::rejected);
    CHECK(r.message.find(in.expected) != std::string::npos);
    CHECK(r.rss_growth_kb <= memory_bound_kb(in.bytes.size()));
  }
}

TEST_CASE("a config with a typo'd section and a missing one names every problem, the unknown key first") {
  test::TempDir tmp("hostile-typo");
  const std::string file = tmp / "typo.yaml";
  test::write_file(file, "name: x\ntrainr: {max_epochs: 1}\n");
  const auto r = test::cairn_cli({"print-config", "--config", file});
  CAPTURE(r.output);
  CHECK(r.exit_code == 2);
  const auto unknown = r.output.find(file + ":2:1: trainr: unknown key 'trainr'; did you mean 'trainer'?");
  const auto data = r.output.find("data: missing required section");
  const auto model = r.output.find("model: missing required section");
  REQUIRE(unknown != std::string::npos);
  REQUIRE(data != std::string::npos);
  REQUIRE(model != std::string::npos);
  CHECK(unknown < data);
  CHECK(data < model);
  CHECK(r.output.find("3 problems") != std::string::npos);
}

TEST_CASE("cairn answers hostile files with exit codes 2 and 3, naming the file and line") {
  test::TempDir tmp("hostile-cli");
  // A YAML alias that contains itself crashed print-config and fit (SIGSEGV).
  const std::string cyc = tmp / "cycle.yaml";
  test::write_file(cyc, "name: x\na: &x [*x, *x]\n");
  for (const char* cmd : {"print-config", "fit"}) {
    CAPTURE(cmd);
    const auto r = test::cairn_cli({cmd, "--config", cyc});
    CAPTURE(r.output);
    CHECK(r.exit_code == 2);
    CHECK(r.output.find(cyc + ":2:") != std::string::npos);
    CHECK(r.output.find("an alias that refers to its own anchor") != std::string::npos);
  }
  // The same through --set.
  const std::string good = tmp / "good.yaml";
  test::write_file(good, test::small_config(tmp / "run"));
  const auto s = test::cairn_cli({"print-config", "--config", good, "--set", "seed=&x [*x]"});
  CAPTURE(s.output);
  CHECK(s.exit_code == 2);
  CHECK(s.output.find("--set seed=&x [*x]") != std::string::npos);

  // A hostile torch.save file as model.init_from: exit 3, the reason named.
  const std::string bomb = test::read_file(hostile_dir() + "/memo-bomb.weights");
  const std::string pt = tmp / "bomb.pt";
  test::write_file(pt, cairn::fuzz::wrap_pickle(bomb.substr(1), false));
  const auto w = test::cairn_cli({"fit", "--config", good, "--set", "model.init_from=" + pt});
  CAPTURE(w.output);
  CHECK(w.exit_code == 3);
  CHECK(w.output.find("shared references repeated too often") != std::string::npos);

  // A zip whose directory claims a 4 GB record: exit 3 before any allocation.
  const std::string huge = test::read_file(hostile_dir() + "/zip-record-size-huge.checkpoint");
  const std::string ck = tmp / "huge.ckpt";
  test::write_file(ck, huge.substr(1));
  const auto i = test::cairn_cli({"inspect", ck});
  CAPTURE(i.output);
  CHECK(i.exit_code == 3);
  CHECK(i.output.find("runs past the end of the data") != std::string::npos);

  // A FIFO where a checkpoint should be: an error, not a reader blocked forever.
  const std::string fifo = tmp / "fifo.ckpt";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const auto f = test::cairn_cli({"inspect", fifo});
  CAPTURE(f.output);
  CHECK(f.exit_code == 3);
  CHECK(f.output.find("not a regular file") != std::string::npos);
}

TEST_CASE("memo references share objects as Python's do: a dict or list saved twice reads back twice, whole") {
  test::TempDir tmp("hostile-shared");
  const std::string f = tmp / "shared.pt";
  const auto py = test::python("save_shared.py", {f});
  REQUIRE_MESSAGE(py.exit_code == 0, py.output);
  cairn::ReadOptions ro;
  ro.require_checksum = false;
  const cairn::Value v = cairn::read_checkpoint(f, ro);
  for (const char* k : {"a", "b"}) {
    CAPTURE(k);
    const auto& x = v.at(k).at("x").to_tensor();
    CHECK(x.equal(torch::arange(3, torch::kFloat32)));
  }
  CHECK(v.at("l1").to_int_list() == std::vector<int64_t>{1, 2, 3});
  CHECK(v.at("l2").to_int_list() == std::vector<int64_t>{1, 2, 3});
}

TEST_CASE("a checkpoint whose checksums verify and whose contents are wrong: every node, every kind of wrong, resumed") {
  // Every node of a real checkpoint's tree (weights, optimizer moments, the
  // schedule, RNG states, metric series and statistics, callback states, the
  // loop section), changed in each way the state fuzzer changes it, written
  // with valid checksums and resumed by a Trainer that trains on: each ends
  // accepted or with cairn's documented error (exit 3, or 2 for unclaimed
  // callback state), never a crash or another exception. In a child process
  // per operation, so a crash is a failed check naming the node.
  // Nothing trains in this process: a child forked from a process whose
  // torch thread pools ran may crash in them (GNU OpenMP after fork).
  const Run base = isolated("state_nodes", "");  // the base itself, resumed unchanged: accepted
  REQUIRE_MESSAGE(base.finished, "the base checkpoint's run crashed: " << base.message);
  const size_t nodes = std::stoul(base.message);
  REQUIRE(nodes > 100);
  const std::vector<std::pair<cairn::fuzz::StateOp, uint8_t>> ops = {
      {cairn::fuzz::StateOp::remove, 0},  {cairn::fuzz::StateOp::integer, 0}, {cairn::fuzz::StateOp::integer, 7},
      {cairn::fuzz::StateOp::real, 0},    {cairn::fuzz::StateOp::text, 1},    {cairn::fuzz::StateOp::reshape, 0x2e},
      {cairn::fuzz::StateOp::retype, 2},  {cairn::fuzz::StateOp::empty, 0},   {cairn::fuzz::StateOp::grow, 0}};
  std::map<std::string, int> outcomes;
  for (const auto& op : ops) {
    // One child per operation walks every node (a fork per node would cost the setup each time).
    std::string bytes;
    for (size_t n = 0; n < nodes; ++n) {
      bytes += static_cast<char>(n >> 8);
      bytes += static_cast<char>(n & 0xff);
      bytes += static_cast<char>(op.first);
      bytes += static_cast<char>(op.second);
    }
    const Run r = isolated("state_sweep", bytes);
    std::printf("  state op %d arg %d: %s, %.1f s\n", int(op.first), int(op.second), r.message.c_str(), r.seconds);
    CHECK_MESSAGE(r.finished, "op " << int(op.first) << ": the child died (signal " << r.signal << "): " << r.message);
    CHECK_MESSAGE(r.exit_code == 0, "op " << int(op.first) << ": " << r.message);
    ++outcomes[r.finished && r.exit_code == 0 ? "clean" : "finding"];
  }
  CHECK(outcomes["clean"] == static_cast<int>(ops.size()));
}
