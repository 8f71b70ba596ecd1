// The edges where a job used to lose its place: restarts that forgot the
// command line, a refused run that damaged a live one, a save failing on one
// rank only, a resume file not named *.ckpt, the process count outside drift
// detection, workers outliving a killed launcher, an exception in epoch_end,
// a late signal after an agreed stop, and callback state dropped silently.
// Real `cairn` processes, real signals, real sockets on 127.0.0.1.
#include "support.h"

#include <cairn/callbacks.h>
#include <cairn/distributed.h>

#include <csignal>
#include <thread>

namespace {

//! A small job on synthetic data; `checkpoint` is the checkpoint callback's
//! options (inside {name: checkpoint, ...}).
std::string job(const std::string& run, int epochs, const std::string& checkpoint, int batch = 16,
                const std::string& extra = "") {
  return "name: edges\nseed: 5\nrun: {dir: " + run + "}\n"
         "data: {name: synthetic, train_size: 1000, valid_size: 200, test_size: 200, features: 16, num_classes: 4, "
         "noise: 1.0, batch_size: " + std::to_string(batch) + "}\n"
         "model: {name: mlp, hidden: [64], dropout: 0.3}\noptimizer: {name: adam, lr: 0.002}\n"
         "trainer: {max_epochs: " + std::to_string(epochs) + ", threads: 1, log_every_n_steps: 5}\n"
         "distributed: {timeout: 120}\n" + extra +
         "callbacks:\n  - {name: checkpoint, " + checkpoint + "}\n";
}

cairn::Value last_of(const std::string& dir) { return cairn::read_checkpoint(dir + "/last.ckpt"); }

//! Waits until `launcher` has two live workers; returns them (rank order).
std::vector<pid_t> two_workers(pid_t launcher) {
  std::vector<pid_t> w;
  test::wait_until([&] { return (w = test::children_of(launcher)).size() == 2; });
  return w;
}

//! Whether every thread of `pid` has stopped (SIGSTOP takes effect at each
//! thread's next scheduling point, not when kill() returns).
bool all_threads_stopped(pid_t pid) {
  std::error_code ec;
  bool any = false;
  for (const auto& t : test::fs::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    const std::string stat = test::read_file(t.path().string() + "/stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    const char state = stat.at(close + 2);
    if (state != 'T' && state != 't') return false;
    any = true;
  }
  return any;
}

bool alive(pid_t pid) {
  const std::string stat = test::read_file("/proc/" + std::to_string(pid) + "/stat");
  const size_t close = stat.rfind(')');
  return close != std::string::npos && stat.at(close + 2) != 'Z';
}

//! name -> (size, mtime) of the files in `dir`.
std::map<std::string, std::pair<uintmax_t, test::fs::file_time_type>> listing(const std::string& dir) {
  std::map<std::string, std::pair<uintmax_t, test::fs::file_time_type>> out;
  for (const auto& e : test::fs::directory_iterator(dir)) {
    if (e.path().extension() == ".ckpt") out[e.path().filename().string()] = {e.file_size(), e.last_write_time()};
  }
  return out;
}
}  // namespace

TEST_CASE("a restart replays the command: --resume FILE until the job saved, and never --overwrite once it has") {
  test::TempDir dir("edges_restart");
  const std::string a = dir / "a", b = dir / "b";
  // A: a finished 1-epoch run to resume from.
  test::write_file(dir / "a.yaml", job(a, 1, "every_n_train_steps: 8"));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "a.yaml"}).exit_code == 0);
  const std::string from = a + "/checkpoints/last.ckpt";

  // B resumes A's file with 2 more epochs and saves only at epoch ends: a
  // worker killed at once dies before B's first save.
  test::write_file(dir / "b.yaml", job(b, 3, "every_n_train_steps: 0, every_n_epochs: 1", 8));  // global batch 16, as A
  const pid_t l = test::spawn({CAIRN_CLI, "fit", "--config", dir / "b.yaml", "--run-dir", b, "--resume", from,
                               "--nproc", "2", "--max-restarts", "1"},
                              dir / "b.log");
  const auto workers = two_workers(l);
  REQUIRE(workers.size() == 2);
  ::kill(workers[1], SIGKILL);
  const int code = test::wait_exit(l);
  const std::string log = test::read_file(dir / "b.log");
  REQUIRE_MESSAGE(code == 0, log);
  CHECK_MESSAGE(log.find("restarting all 2 processes with the original arguments") != std::string::npos, log);
  const size_t restart = log.find("(restart 1 of 1)");
  REQUIRE(restart != std::string::npos);
  // The restart resumed A's file again (it used to start B from scratch).
  CHECK_MESSAGE(log.find("resumed from " + from, restart) != std::string::npos, log);
  CHECK(last_of(b + "/checkpoints").at("epoch").to_int() == 3);

  // --overwrite over a finished run, a worker killed at once: the restart
  // starts over again; it used to "resume" the old finished run and exit 0.
  const pid_t l2 = test::spawn({CAIRN_CLI, "fit", "--config", dir / "b.yaml", "--run-dir", b, "--overwrite",
                                "--nproc", "2", "--max-restarts", "1"},
                               dir / "b2.log");
  const auto w2 = two_workers(l2);
  REQUIRE(w2.size() == 2);
  ::kill(w2[1], SIGKILL);
  const int code2 = test::wait_exit(l2);
  const std::string log2 = test::read_file(dir / "b2.log");
  REQUIRE_MESSAGE(code2 == 0, log2);
  CHECK(log2.find("(restart 1 of 1)") != std::string::npos);
  CHECK_MESSAGE(log2.find("already finished") == std::string::npos, log2);
  CHECK(log2.find("resumed from") == std::string::npos);
  const cairn::Value fresh = last_of(b + "/checkpoints");
  CHECK(fresh.at("loop").at("resumes").size() == 0);
  CHECK(fresh.at("epoch").to_int() == 3);
}

TEST_CASE("a run refused by the lock of a shared checkpoint folder deletes and writes nothing there") {
  test::TempDir dir("edges_shared");
  const std::string shared = dir / "shared";
  test::write_file(dir / "live.yaml", job(dir / "live", 200, "dirpath: " + shared + ", every_n_train_steps: 5"));
  const pid_t live = test::spawn({CAIRN_CLI, "fit", "--config", dir / "live.yaml"}, dir / "live.log");
  REQUIRE(test::wait_for_file(shared + "/last.ckpt"));
  // Frozen while it holds the folder: its files cannot change under the test.
  REQUIRE(::kill(live, SIGSTOP) == 0);
  REQUIRE(test::wait_until([&] { return all_threads_stopped(live); }));
  const auto before = listing(shared);
  REQUIRE(before.count("last.ckpt") == 1);

  test::write_file(dir / "other.yaml", job(dir / "other", 1, "dirpath: " + shared));
  auto r = test::cairn_cli({"fit", "--config", dir / "other.yaml", "--resume", "never", "--overwrite"});
  CHECK_MESSAGE(r.exit_code == 4, r.output);
  CHECK(r.output.find("in use") != std::string::npos);
  const bool untouched = listing(shared) == before;  // every file of the live run, as it was
  CHECK(untouched);

  ::kill(live, SIGCONT);
  ::kill(live, SIGTERM);
  CHECK(test::wait_exit(live) == 143);
}

TEST_CASE("a save that fails on rank 0 only leaves every rank's book the same: the job goes on and ends") {
  test::TempDir dir("edges_book");
  const std::string run = dir / "run", ckpts = run + "/checkpoints";
  // A fixed top-k name whose place is taken by a folder: rank 0's writes of it
  // fail; the others never write. save_last off, so a save that keeps no
  // top-k file returns early: the ranks' books once decided differently and
  // their next collectives did not match (a timeout, exit 6).
  test::write_file(dir / "c.yaml", job(run, 4, "monitor: valid/acc, mode: max, save_top_k: 1, filename: best, "
                                                "save_last: false, every_n_train_steps: 0, every_n_epochs: 1"));
  test::fs::create_directories(ckpts + "/best.ckpt/occupied");
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--nproc", "2"});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("checkpoint not saved") != std::string::npos);
  CHECK(r.output.find("distributed error") == std::string::npos);
  CHECK(last_of(ckpts).at("loop").at("finished").to_bool());
}

TEST_CASE("--resume FILE with any name works in a job of 2 processes (a name without .ckpt hung rank 1)") {
  test::TempDir dir("edges_name");
  test::write_file(dir / "a.yaml", job(dir / "a", 1, "every_n_train_steps: 8"));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "a.yaml"}).exit_code == 0);
  test::fs::copy_file(dir / "a/checkpoints/last.ckpt", dir / "snapshot.bin");
  test::write_file(dir / "b.yaml", job(dir / "b", 2, "every_n_train_steps: 8", 8));  // global batch 16, as A
  // (The hang it once had ends as a distributed timeout: exit 6, not 0.)
  auto r = test::cairn_cli({"fit", "--config", dir / "b.yaml", "--resume", dir / "snapshot.bin", "--nproc", "2"});
  CHECK_MESSAGE(r.exit_code == 0, r.output);
  CHECK(r.output.find("[rank 0] cairn: resumed from " + dir / "snapshot.bin") != std::string::npos);
}

TEST_CASE("resuming at another process count with the same per-process batch is config drift (the global batch "
          "changes); keeping the global batch is accepted") {
  test::TempDir dir("edges_world");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", job(run, 1, "every_n_train_steps: 4"));
  const pid_t l = test::spawn({CAIRN_CLI, "fit", "--config", dir / "c.yaml", "--nproc", "2"}, dir / "two.log");
  REQUIRE(test::wait_for_file(run + "/checkpoints/last.ckpt"));
  ::kill(l, SIGTERM);
  REQUIRE(test::wait_exit(l) == 143);
  auto one = test::cairn_cli({"fit", "--config", dir / "c.yaml"});
  CHECK_MESSAGE(one.exit_code == 2, one.output);
  CHECK_MESSAGE(one.output.find("processes: 2 -> 1") != std::string::npos, one.output);
  CHECK(one.output.find("the global batch (data.batch_size x processes) changes from 32 to 16") != std::string::npos);
  CHECK(one.output.find("--set data.batch_size=32") != std::string::npos);
  auto kept = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "data.batch_size=32"});
  CHECK_MESSAGE(kept.exit_code == 0, kept.output);
  CHECK(kept.output.find("processes: 2 -> 1 (the global batch stays 32)") != std::string::npos);
}

TEST_CASE("kill -9 of the launcher takes its workers with it; the next fit owns the run (not exit 4)") {
  test::TempDir dir("edges_orphans");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", job(run, 200, "every_n_train_steps: 5"));
  const pid_t l = test::spawn({CAIRN_CLI, "fit", "--config", dir / "c.yaml", "--nproc", "2"}, dir / "l.log");
  const auto workers = two_workers(l);
  REQUIRE(workers.size() == 2);
  REQUIRE(test::wait_for_file(run + "/checkpoints/last.ckpt"));
  ::kill(l, SIGKILL);
  test::wait_exit(l);
  // Gone as soon as the kernel delivers their parent-death signal (a worker
  // inside an fsync may take a while on a busy disk): a hang guard only.
  CHECK(test::wait_until([&] { return !alive(workers[0]) && !alive(workers[1]); }, 10));
  for (pid_t w : workers) ::kill(w, SIGKILL);  // (only if the check failed)
  auto again = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=1",
                                "--allow-config-change"});
  CHECK_MESSAGE(again.exit_code != 4, again.output);
  CHECK(again.output.find("resumed from") != std::string::npos);
}

TEST_CASE("an exception in epoch_end of an epoch without validation is not saved over the stepped schedule") {
  // StepLR per epoch (gamma 0.5); validation every 2 epochs, so epoch 0 has none.
  struct ThrowOnce : cairn::Callback {
    bool armed = true;
    std::string key() const override { return "ThrowOnce"; }
    void on_epoch_end(cairn::Loop&) override {
      if (armed) {
        armed = false;
        throw std::runtime_error("boom at epoch_end");
      }
    }
  };
  auto train = [](const std::string& run, bool throw_once, int resume) {
    cairn::Trainer t(cairn::TrainerOptions().max_epochs(3).threads(1).check_val_every_n_epoch(2));
    cairn::SyntheticOptions so;
    cairn::Model model = cairn::Model::wrap(cairn::make_mlp({{so.features}, {16}, so.num_classes, 0.0}));
    auto opt = std::make_shared<torch::optim::Adam>(model.module->parameters(), torch::optim::AdamOptions(1e-3));
    t.set_model(model);
    t.set_data(std::make_shared<cairn::SyntheticData>(so));
    t.loop().set_run_dir(run);
    t.set_optimizer(opt);
    t.set_scheduler(std::make_shared<cairn::StepLR>(*opt, 1, 0.5));
    t.add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions().every_n_train_steps(5)));
    if (throw_once) t.add_callback(std::make_shared<ThrowOnce>());
    if (resume) t.resume_from(run + "/checkpoints");
    try {
      t.fit();
    } catch (const std::runtime_error&) {
    }
    return opt->param_groups()[0].options().get_lr();
  };
  test::TempDir dir("edges_epoch_end");
  const double expected = train(dir / "ref", false, 0);
  train(dir / "run", true, 0);  // throws at the end of epoch 0, after the scheduler stepped
  const cairn::Value saved = last_of(dir / "run/checkpoints");
  const double got = train(dir / "run", false, 1);
  CAPTURE(saved.at("epoch").to_int());
  CHECK(expected == doctest::Approx(0.001 * 0.125));
  CHECK(got == expected);  // a factor 0.5 too low when the stepped state was saved at epoch 0
}

TEST_CASE("a signal that reaches one rank after a stop was agreed becomes an interrupt on every rank") {
  // Two ranks of a real Gloo group, as threads of this process.
  const int port = cairn::free_local_port();
  std::vector<std::unique_ptr<cairn::Loop>> loops(2);
  std::vector<std::thread> ranks;
  std::vector<int> interrupted(2, -1);
  std::vector<std::string> errors(2);
  for (int r = 0; r < 2; ++r) {
    ranks.emplace_back([&, r] {
      try {
        cairn::DistEnv env;
        env.rank = env.local_rank = r;
        env.world_size = 2;
        env.master_port = port;
        auto group = cairn::ProcessGroup::join(env, std::chrono::seconds(20));
        auto& loop = *(loops[static_cast<size_t>(r)] = std::make_unique<cairn::Loop>());
        loop.set_process_group(group);
        loop.fit_begin();
        loop.epoch_begin();
        loop.batch_begin();
        if (r == 0) loop.state().request_stop("early stopping");  // agreed at batch_end
        loop.batch_end();
        if (!loop.should_stop()) throw std::runtime_error("the stop was not agreed");
        // The launcher's SIGTERM reaches rank 1 now, rank 0 later (after its check).
        if (r == 1) loop.state().request_interrupt(SIGTERM, "received SIGTERM");
        loop.validation_begin();
        loop.validation_end();
        interrupted[static_cast<size_t>(r)] = loop.state().stop.interrupt ? 1 : 0;
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : ranks) t.join();
  CHECK(errors[0] == "");
  CHECK(errors[1] == "");
  // Both ranks now skip the test pass and save an interrupt, together.
  CHECK(interrupted[0] == 1);
  CHECK(interrupted[1] == 1);
}

TEST_CASE("a checkpoint callback's state survives a change of its cadence; state nothing claims stops the resume") {
  test::TempDir dir("edges_claims");
  const std::string run = dir / "run";
  test::write_file(dir / "c.yaml", job(run, 2, "monitor: valid/acc, mode: max, save_top_k: 2, every_n_train_steps: 10",
                                       16, ""));
  REQUIRE(test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=1"}).exit_code == 0);
  const cairn::Value first = last_of(run + "/checkpoints");
  const std::string key = "Checkpoint{monitor=valid/acc,mode=max}";
  REQUIRE(first.at("callbacks").contains(key));
  const std::string best = first.at("callbacks").at(key).at("best_model_path").to_string();
  REQUIRE(!best.empty());

  // Another cadence: the same callback, its top-k list and best model kept.
  auto r = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "callbacks[0].every_n_train_steps=7"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.output);
  const cairn::Value second = last_of(run + "/checkpoints");
  const cairn::Value& state = second.at("callbacks").at(key);
  CHECK(state.at("best_k_models").size() == 2);
  CHECK(state.at("monitor_values_seen").to_int() == 2);

  // The callback removed (another monitor): its saved state has no owner.
  auto gone = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=3", "--set",
                               "callbacks[0].monitor=valid/loss", "--set", "callbacks[0].mode=min"});
  CHECK_MESSAGE(gone.exit_code == 2, gone.output);
  CHECK(gone.output.find("holds the state of callback(s) this run does not have: " + key) != std::string::npos);
  auto allowed = test::cairn_cli({"fit", "--config", dir / "c.yaml", "--set", "trainer.max_epochs=3", "--set",
                                  "callbacks[0].monitor=valid/loss", "--set", "callbacks[0].mode=min",
                                  "--allow-config-change"});
  CHECK_MESSAGE(allowed.exit_code == 0, allowed.output);
  CHECK(allowed.output.find("dropping the saved state of " + key) != std::string::npos);
}

TEST_CASE("retention plans: best k by the monitor, newest k without; never the best or the new file; a book "
          "travels between ranks unchanged") {
  cairn::Retention best2(2, cairn::Mode::max, 0.0, true);
  cairn::RetentionBook book;
  auto p = best2.plan(book, "a", 0.5, 1);
  CHECK(p.file == "a");
  CHECK(p.drop.empty());
  book = p.next;
  book = best2.plan(book, "b", 0.7, 2).next;
  p = best2.plan(book, "c", 0.6, 3);  // better than a, worse than b: replaces a
  CHECK(p.file == "c");
  CHECK(p.drop == std::vector<std::string>{"a"});
  CHECK(p.next.best_path == "b");
  CHECK(best2.plan(p.next, "d", 0.1, 4).file.empty());   // worse than both: kept nowhere
  CHECK(best2.plan(p.next, "d", 0.9, 3).file.empty());   // no new value since the last decision
  CHECK(best2.plan(p.next, "d", std::nan(""), 4).file.empty());
  cairn::Retention newest1(1, cairn::Mode::min, 0.0, false);
  cairn::RetentionBook nb;
  nb = newest1.plan(nb, "x", std::nullopt, 0).next;
  const auto q = newest1.plan(nb, "y", std::nullopt, 0);
  CHECK(q.drop == std::vector<std::string>{"x"});  // dropped only once "y" is durable (Checkpoint)
  CHECK(cairn::Retention(0, cairn::Mode::min, 0.0, false).plan(nb, "z", std::nullopt, 0).file.empty());

  p.next.last_path = "dir with spaces:and:colons/last.ckpt";
  CHECK(cairn::RetentionBook::decode(p.next.encode()) == p.next);
  cairn::RetentionBook none;
  CHECK(cairn::RetentionBook::decode(none.encode()) == none);
}
