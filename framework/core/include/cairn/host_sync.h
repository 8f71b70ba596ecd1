// Reads of device values back to the host. Each one waits for the device to
// finish everything queued before it, so a training step that reads nothing
// lets the host run ahead (on a GPU the difference is large for small
// models). Every read cairn's own code makes during training goes through
// these functions, which count them: tests/test_host_reads.cpp checks that a
// step reads nothing between log_every_n_steps points.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>

namespace cairn {

//! The value of a one-element tensor (counted).
double read_double(const at::Tensor& t);
//! The value of a one-element bool tensor (counted).
bool read_bool(const at::Tensor& t);
//! `t` on the CPU (counted on every device, as the other two).
at::Tensor read_to_cpu(const at::Tensor& t);
//! Reads made through the functions above so far, in this process.
int64_t host_reads();

}  // namespace cairn
