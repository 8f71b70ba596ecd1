// libFuzzer entry point, built once per target (tests/fuzz/CMakeLists.txt sets
// CAIRN_FUZZ_TARGET to checkpoint, weights, config or set_args; see harness.h).
// Run through scripts/fuzz.sh.
#include "harness.h"

#include <ATen/Parallel.h>

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  cairn::fuzz::CAIRN_FUZZ_TARGET(data, size);
  return 0;
}
