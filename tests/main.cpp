// The test binary's entry point: doctest's, plus one option for CTest.
//   --cairn-needs-gpu   the selected tests need a CUDA device: without one,
//                       say why and exit 77, which CTest reports as
//                       "Skipped" (SKIP_RETURN_CODE) instead of a silent pass.
#define DOCTEST_CONFIG_IMPLEMENT
#include "doctest_torch.h"

#include <torch/cuda.h>
#include <torch/version.h>

#include <cstring>
#include <iostream>
#include <vector>

int main(int argc, char** argv) {
  std::vector<char*> args;
  bool needs_gpu = false;
  for (int i = 0; i < argc; ++i) {
    if (std::strcmp(argv[i], "--cairn-needs-gpu") == 0) {
      needs_gpu = true;
    } else {
      args.push_back(argv[i]);
    }
  }
  if (needs_gpu && !torch::cuda::is_available()) {
    std::cout << "SKIPPED: these tests need a CUDA device, and this machine has none (LibTorch " << TORCH_VERSION
              << (CAIRN_TORCH_CUDA_BUILD ? ", a CUDA build" : ", a CPU-only build")
              << "). They run on a GPU machine: bench/gpu_check.sh.\n";
    return 77;
  }
  doctest::Context context(static_cast<int>(args.size()), args.data());
  return context.run();
}
