#include "cairn/signals.h"

#include <atomic>
#include <csignal>
#include <unistd.h>

namespace cairn {
namespace signals {

namespace {
std::atomic<int> g_pending{0};

extern "C" void on_stop_signal(int sig) {
  const int previous = g_pending.exchange(sig);
  if (previous != 0 && sig == SIGINT) {
    static const char msg[] = "\ncairn: second interrupt, exiting without saving\n";
    ssize_t ignored = ::write(2, msg, sizeof(msg) - 1);
    (void)ignored;
    ::_exit(128 + sig);
  }
}
}  // namespace

namespace {
void install_saving(struct sigaction* old_term, struct sigaction* old_int, struct sigaction* old_xfsz) {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, old_term);
  sigaction(SIGINT, &sa, old_int);
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  sigaction(SIGXFSZ, &ignore, old_xfsz);
}
}  // namespace

void install() { install_saving(nullptr, nullptr, nullptr); }

Scope::Scope() { install_saving(&term_, &int_, &xfsz_); }

Scope::~Scope() {
  sigaction(SIGTERM, &term_, nullptr);
  sigaction(SIGINT, &int_, nullptr);
  sigaction(SIGXFSZ, &xfsz_, nullptr);
}

int pending() { return g_pending.load(std::memory_order_relaxed); }
void clear() { g_pending.store(0); }

}  // namespace signals
}  // namespace cairn
