// Graceful stop on SIGTERM / SIGINT (spot-instance notices, Ctrl-C, schedulers).
//
// After install(), the first SIGTERM or SIGINT only sets a flag; the Loop
// turns it into a stop request at the next batch boundary, the checkpoint
// callback saves, and the program exits with 128 + signal. A second SIGINT
// exits at once. SIGXFSZ is ignored so that a file-size limit makes a write
// fail with an error (and the last good checkpoint survive) instead of
// killing the process.
#pragma once

namespace cairn {
namespace signals {

void install();
//! The pending stop signal, or 0.
int pending();
void clear();

}  // namespace signals
}  // namespace cairn
