// The subclassed-Trainer route (examples/subclass_trainer.cpp) stops
// gracefully on SIGINT and SIGTERM without calling signals::install()
// itself: Trainer::fit handles both while it runs. Real processes, real signals.
#include "support.h"

#include <cairn/callbacks.h>

#include <csignal>

#ifndef CAIRN_EXAMPLE_SUBCLASS_TRAINER
#error "test_signals runs examples/subclass_trainer.cpp: configure with CAIRN_BUILD_EXAMPLES=ON"
#endif

namespace {
// Starts the example, waits until it has begun training (its model summary is
// printed at fit's start), sends `sig` and returns the exit code and output.
test::ProcessResult signalled(const std::string& run_dir, const std::string& log, int sig) {
  const pid_t pid = test::spawn({CAIRN_EXAMPLE_SUBCLASS_TRAINER, run_dir, "2", "3000"}, log);
  const bool began = test::wait_until([&] { return test::read_file(log).find("model:") != std::string::npos; });
  ::kill(pid, sig);
  test::ProcessResult r;
  r.exit_code = test::wait_exit(pid);
  r.output = test::read_file(log);
  REQUIRE_MESSAGE(began, r.output);
  return r;
}
}  // namespace

TEST_CASE("a subclassed Trainer saves and exits 128+signal on SIGINT and SIGTERM, then resumes to the end") {
  test::TempDir dir("signals");
  const std::string run = dir / "run", last = run + "/checkpoints/last.ckpt";
  int64_t saved_step = 0;
  for (int sig : {SIGINT, SIGTERM}) {
    CAPTURE(sig);
    // A log of its own: the previous process's "model:" must not count as this one's.
    const auto r = signalled(run, dir / ("log-" + std::to_string(sig) + ".txt"), sig);
    CHECK_MESSAGE(r.exit_code == 128 + sig, r.output);
    // fit returned (the example printed its line) instead of the process dying by the signal.
    CHECK_MESSAGE(r.output.find("interrupted at step") != std::string::npos, r.output);
    REQUIRE_MESSAGE(test::fs::exists(last), r.output);
    const cairn::Value saved = cairn::read_checkpoint(last);
    CHECK_FALSE(saved.at("loop").at("finished").to_bool());
    const int64_t step = saved.at("global_step").to_int();
    CHECK(step >= saved_step);  // the second run resumed from the first one's save
    saved_step = step;
  }
  const auto rest = test::run({CAIRN_EXAMPLE_SUBCLASS_TRAINER, run, "2", "3000"});
  CHECK_MESSAGE(rest.exit_code == 0, rest.output);
  const cairn::Value done = cairn::read_checkpoint(last);
  CHECK(done.at("loop").at("finished").to_bool());
  CHECK(done.at("global_step").to_int() > saved_step);
}

TEST_CASE("signals::Scope puts back the handler it replaced") {
  struct sigaction mine {};
  mine.sa_handler = SIG_IGN;
  sigemptyset(&mine.sa_mask);
  struct sigaction before {};
  REQUIRE(::sigaction(SIGTERM, &mine, &before) == 0);
  {
    cairn::signals::Scope scope;
    struct sigaction during {};
    ::sigaction(SIGTERM, nullptr, &during);
    CHECK((during.sa_handler != SIG_IGN));
  }
  struct sigaction after {};
  ::sigaction(SIGTERM, nullptr, &after);
  CHECK((after.sa_handler == SIG_IGN));
  ::sigaction(SIGTERM, &before, nullptr);
}

TEST_CASE("after a fit a signal stopped, the next fit in the same process starts clean and saves on its own Ctrl-C") {
  test::TempDir dir("signals_again");
  auto make = [&] {
    auto t = std::make_unique<cairn::Trainer>(cairn::TrainerOptions().max_epochs(2).threads(1));
    t->set_model(cairn::Model::wrap(torch::nn::Sequential(torch::nn::Linear(16, 8), torch::nn::ReLU(),
                                                          torch::nn::Linear(8, 4))));
    t->set_data(test::synthetic(320, 32));
    t->loop().set_run_dir(dir.str());
    t->add_callback(std::make_shared<cairn::Checkpoint>(cairn::CheckpointOptions()));
    t->resume_from(dir / "checkpoints");
    return t;
  };
  for (int round = 0; round < 2; ++round) {  // each fit is stopped by its own SIGINT, raised at its 3rd step
    CAPTURE(round);
    auto t = make();
    const int64_t stop_at = 3 * (round + 1);
    t->loop().on(cairn::Event::batch_end, [&](cairn::Loop& l) {
      if (l.state().global_step == stop_at) ::raise(SIGINT);
    });
    const cairn::FitResult r = t->fit();  // the second SIGINT would _exit(130) if the first were still pending
    CHECK(r.interrupted);
    CHECK(r.signal == SIGINT);
    CHECK(r.global_step == stop_at + 1);  // its own signal, at the next boundary; not at once by the last fit's
  }
  const cairn::FitResult done = make()->fit();
  CHECK_FALSE(done.interrupted);
  CHECK(done.epochs_completed == 2);
}
