// The library's layers: the core (framework/core) needs neither YAML nor the
// application layer, the callback library (callbacks/) builds on the core
// alone, and only the application layer (framework/app) reads configs. Also
// the one-place helpers the layers share (JSON text, "better than best").
#include "support.h"

#include <cairn/callbacks.h>
#include <cairn/json.h>
#include <cairn/metrics.h>

#include <map>
#include <regex>
#include <set>

namespace {
namespace fs = test::fs;

std::set<std::string> headers_in(const fs::path& include_dir) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(include_dir)) {
    if (e.path().extension() == ".h") out.insert(fs::relative(e.path(), include_dir).string());
  }
  return out;
}

// Every #include of the files under `dir` (header or source): file -> included names.
std::vector<std::pair<std::string, std::string>> includes_under(const fs::path& dir) {
  std::vector<std::pair<std::string, std::string>> out;
  const std::regex inc(R"(^\s*#\s*include\s*[<"]([^>"]+)[>"])");
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::istringstream in(test::read_file(e.path().string()));
    std::string line;
    std::smatch m;
    while (std::getline(in, line)) {
      if (std::regex_search(line, m, inc)) out.emplace_back(e.path().string(), m[1]);
    }
  }
  return out;
}
}  // namespace

TEST_CASE("the core and the callback library include neither yaml-cpp nor the application layer") {
  const fs::path src = CAIRN_SOURCE_DIR;
  const auto core = headers_in(src / "framework/core/include");
  const auto callbacks = headers_in(src / "callbacks/include");
  const auto app = headers_in(src / "framework/app/include");
  REQUIRE(core.count("cairn/loop.h") == 1);
  REQUIRE(app.count("cairn/config.h") == 1);
  REQUIRE(callbacks.count("cairn/callbacks/checkpoint.h") == 1);
  // A header name belongs to exactly one layer.
  for (const auto& h : app) CHECK_MESSAGE(core.count(h) + callbacks.count(h) == 0, h);
  for (const auto& h : callbacks) CHECK_MESSAGE(core.count(h) == 0, h);

  size_t checked = 0;
  for (const auto& dir : {src / "framework/core", src / "callbacks"}) {
    for (const auto& inc : includes_under(dir)) {
      const std::string& file = inc.first;
      const std::string& name = inc.second;
      ++checked;
      CHECK_MESSAGE(name.rfind("yaml-cpp/", 0) != 0, file << " includes " << name);
      CHECK_MESSAGE(app.count(name) == 0, file << " includes the application layer's " << name);
      if (dir == src / "framework/core") CHECK_MESSAGE(callbacks.count(name) == 0, file << " includes " << name);
    }
  }
  CHECK(checked > 50);
}

TEST_CASE("the run on disk is a wing of its own: the file below the store, the store below the run, the Loop beside") {
  const fs::path core = fs::path(CAIRN_SOURCE_DIR) / "framework/core";
  // Who may include what, by file (header or source).
  const std::set<std::string> file_layer = {"include/cairn/checkpoint_file.h", "include/cairn/run_checkpoint.h",
                                            "src/checkpoint_file.cpp", "src/checkpoint_view.cpp",
                                            "src/pickle_codec.cpp", "src/pickle_codec.h", "src/zip_writer.cpp",
                                            "src/zip_writer.h", "src/zip_reader.cpp", "src/zip_reader.h",
                                            "src/zip_format.h", "src/file_io.cpp", "src/file_io.h", "src/checksums.h"};
  const std::set<std::string> store = {"include/cairn/checkpoint_store.h", "src/checkpoint_store.cpp"};
  const std::set<std::string> run_layer = {"include/cairn/run_dir.h", "src/run_dir.cpp"};
  const std::set<std::string> loop = {"include/cairn/loop.h", "src/loop.cpp"};
  const std::set<std::string> above_file = {"cairn/checkpoint_store.h", "cairn/run_dir.h", "cairn/run_lock.h",
                                            "cairn/loop.h", "cairn/trainer.h", "cairn/callback.h",
                                            "cairn/distributed.h"};
  std::map<std::string, size_t> seen;
  for (const auto& inc : includes_under(core)) {
    const std::string file = fs::relative(inc.first, core).string();
    const std::string& name = inc.second;
    ++seen[file];
    if (file_layer.count(file)) {
      CHECK_MESSAGE(above_file.count(name) == 0, file << " (the checkpoint file) includes " << name);
    }
    if (store.count(file)) {
      for (const char* up : {"cairn/run_dir.h", "cairn/loop.h", "cairn/trainer.h", "cairn/distributed.h"}) {
        CHECK_MESSAGE(name != up, file << " (the store) includes " << name);
      }
    }
    if (loop.count(file)) {
      // The Loop writes and reads the dictionary; which file, which folder and its lock are the run layer's.
      for (const char* run : {"cairn/checkpoint_store.h", "cairn/run_dir.h", "cairn/run_lock.h"}) {
        CHECK_MESSAGE(name != run, file << " (the Loop) includes " << name);
      }
    }
    if (run_layer.count(file)) CHECK_MESSAGE(name != "cairn/trainer.h", file << " (the run layer) includes " << name);
  }
  for (const auto& f : {"include/cairn/run_dir.h", "src/run_dir.cpp", "src/checkpoint_view.cpp", "src/loop.cpp",
                        "src/checkpoint_store.cpp", "src/checkpoint_file.cpp"}) {
    CHECK_MESSAGE(seen[f] > 0, f << " has no #include: the rule looked at nothing");
  }
  for (const auto& f : loop) {
    CHECK_MESSAGE(test::read_file((core / f).string()).find("RunLock") == std::string::npos, f << " names RunLock");
  }

  // One view type: outside the Loop's own writer and reader (run_checkpoint.cpp)
  // and the View (checkpoint_view.cpp), no source reads a checkpoint's
  // top-level keys by name.
  const std::regex key_read(R"re(\b(at|find|contains)\("(global_step|batch_in_epoch|hyper_parameters|evaluate_with|format_version|section_versions|optimizer_states|lr_schedulers|rng_states|loop|metrics|callbacks|weights_only)"\))re");
  size_t files = 0;
  for (const auto& dir : {fs::path(CAIRN_SOURCE_DIR) / "framework", fs::path(CAIRN_SOURCE_DIR) / "callbacks"}) {
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
      const std::string name = e.path().filename().string();
      if (!e.is_regular_file() || (e.path().extension() != ".cpp" && e.path().extension() != ".h")) continue;
      if (name == "run_checkpoint.cpp" || name == "checkpoint_view.cpp") continue;
      ++files;
      std::istringstream in(test::read_file(e.path().string()));
      std::string line;
      for (int n = 1; std::getline(in, line); ++n) {
        CHECK_MESSAGE(!std::regex_search(line, key_read),
                      e.path().string() << ":" << n << " reads a checkpoint key by name (use run_checkpoint::View): " << line);
      }
    }
  }
  CHECK(files > 80);
}

TEST_CASE("json::quote escapes quotes, backslashes and every control character") {
  CHECK(cairn::json::quote("plain") == "\"plain\"");
  CHECK(cairn::json::quote("a\"b\\c") == "\"a\\\"b\\\\c\"");
  CHECK(cairn::json::quote("t\tn\nr\r") == "\"t\\tn\\nr\\r\"");
  CHECK(cairn::json::quote(std::string("nul\0x", 5)) == "\"nul\\u0000x\"");
  CHECK(cairn::json::quote("\x01\x1f\x7f") == "\"\\u0001\\u001f\\u007f\"");
  CHECK(cairn::json::quote("</script>") == "\"<\\/script>\"");
  CHECK(cairn::json::quote("é") == "\"é\"");  // UTF-8 passes through
  // What Python's json module reads back is the original text.
  const std::string tricky = std::string("x\0\x02\"\\\n</", 8);
  test::TempDir dir("json");
  test::write_file(dir / "v.json", cairn::json::quote(tricky));
  test::write_file(dir / "check.py",
                   "import json, sys\nv = json.load(open(sys.argv[1]))\nprint(' '.join(str(ord(c)) for c in v))\n");
  auto p = test::run({CAIRN_PYTHON, dir / "check.py", dir / "v.json"});
  REQUIRE_MESSAGE(p.exit_code == 0, p.output);
  CHECK(p.output == "120 0 2 34 92 10 60 47\n");
  CHECK(cairn::json::number(0.1) == "0.1");
  CHECK(cairn::json::number(1.0 / 0.0) == "null");
  CHECK(cairn::json::number(std::nan("")) == "null");
}

TEST_CASE("better_than: one comparison for checkpoint, early stopping and the plateau scheduler") {
  using cairn::Mode;
  CHECK(cairn::better_than(Mode::min, 0.9, 1.0));
  CHECK_FALSE(cairn::better_than(Mode::min, 1.0, 1.0));
  CHECK_FALSE(cairn::better_than(Mode::min, 0.95, 1.0, 0.1));  // not by more than min_delta
  CHECK(cairn::better_than(Mode::min, 0.85, 1.0, 0.1));
  CHECK(cairn::better_than(Mode::max, 1.2, 1.0, 0.1));
  CHECK_FALSE(cairn::better_than(Mode::max, 1.05, 1.0, 0.1));
  CHECK_FALSE(cairn::better_than(Mode::min, std::nan(""), 1.0));
  // Relative margins, as PyTorch's ReduceLROnPlateau: best * (1 -/+ threshold).
  CHECK(cairn::better_than(Mode::min, 0.89, 1.0, 0.1, true));
  CHECK_FALSE(cairn::better_than(Mode::min, 0.91, 1.0, 0.1, true));
  CHECK(cairn::better_than(Mode::min, 5.0, INFINITY, 0.1, true));  // the initial best
  CHECK(cairn::better_than(Mode::max, -5.0, -INFINITY, 0.1, true));
  // The metric tracker and the callbacks agree with it.
  cairn::Best best(Mode::min, 0.1);
  CHECK(best.update(1.0, 0, 1));
  CHECK_FALSE(best.update(0.95, 1, 2));
  CHECK(best.update(0.85, 2, 3));
  CHECK(*best.best() == 0.85);
}

TEST_CASE("the JSON-lines logger writes control characters in metric names as JSON escapes") {
  test::TempDir dir("jsonl_escape");
  const std::string name = std::string("train/odd\x01\t\"name\\");
  {
    cairn::Loop loop;
    loop.set_run_dir(dir.str());
    loop.add(std::make_shared<cairn::JsonlLogger>());
    loop.state().max_epochs = 1;
    loop.state().batches_per_epoch = 1;
    loop.fit_begin();
    loop.epoch_begin();
    loop.batch_begin();
    loop.log_step(name, 0.5, 1.0);
    loop.batch_end();
    loop.epoch_end();
    loop.fit_end();
  }
  const std::string text = test::read_file(dir / "metrics.jsonl");
  CHECK(text.find('\x01') == std::string::npos);  // no raw control byte in the file
  test::write_file(dir / "check.py",
                   "import json, sys\n"
                   "for line in open(sys.argv[1]):\n"
                   "    r = json.loads(line)\n"
                   "    print(' '.join(str(ord(c)) for c in r['name']), r['value'])\n");
  auto p = test::run({CAIRN_PYTHON, dir / "check.py", dir / "metrics.jsonl"});
  REQUIRE_MESSAGE(p.exit_code == 0, p.output << text);
  std::string expected;
  for (char c : name) expected += (expected.empty() ? "" : " ") + std::to_string(static_cast<unsigned char>(c));
  CHECK_MESSAGE(p.output.find(expected + " 0.5") != std::string::npos, p.output);
}
