// Graceful stop on SIGTERM / SIGINT (spot-instance notices, Ctrl-C, schedulers).
//
// After install(), the first SIGTERM or SIGINT only sets a flag; the Loop
// turns it into a stop request at the next batch boundary, the checkpoint
// callback saves, and the program exits with 128 + signal. A second SIGINT
// exits at once. SIGXFSZ is ignored so that a file-size limit makes a write
// fail with an error (and the last good checkpoint survive) instead of
// killing the process.
//
// Trainer::fit holds a signals::Scope for its duration (unless
// TrainerOptions::handle_signals is false), so a subclassed Trainer saves on
// Ctrl-C and SIGTERM as `cairn fit` does; the handlers it replaced come back
// when fit returns. A hand-written loop calls install() itself.
#pragma once

#include <signal.h>

namespace cairn {
namespace signals {

//! Installs the graceful stop for the rest of the process's life.
void install();

//! Installs the graceful stop while it lives, then puts back the handlers it
//! replaced (a program's own, or the default that ends the process).
class Scope {
 public:
  Scope();
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  struct sigaction term_{}, int_{}, xfsz_{};  //!< the actions in force before
};
//! The pending stop signal, or 0.
int pending();
void clear();

}  // namespace signals
}  // namespace cairn
