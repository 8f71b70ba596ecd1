# Finds LibTorch for cairn and checks, before anything compiles, that it can
# build cairn: a clear CMake error instead of a compile or link error 500 lines
# long. One home for the platform differences the build system must know.
#
# Two platforms are supported and built in CI (docs/building.md, "Two platforms"):
#   - Debian's LibTorch 1.13 (libtorch-dev, CPU only);
#   - LibTorch 2.x from PyPI's `torch` wheel (the CUDA build), found with
#     -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')".
#
# Sets:
#   CAIRN_TORCH_VERSION      e.g. 2.11.0
#   CAIRN_TORCH_MAJOR        1 or 2 (chooses framework/core/src/c10d/group_torch<N>.cpp)
#   CAIRN_HAVE_NCCL          ON when this LibTorch has c10d's ProcessGroupNCCL
#   CAIRN_HAVE_CUDA          ON when this LibTorch is a CUDA build
#   CAIRN_NCCL_INCLUDE_DIR   nccl.h's folder, when CAIRN_HAVE_NCCL
#   CAIRN_GLOO_INCLUDE_DIR   Gloo's headers (c10d's ProcessGroupGloo.hpp includes them)

find_package(Torch REQUIRED)
set(CAIRN_TORCH_VERSION "${Torch_VERSION}")
if(NOT CAIRN_TORCH_VERSION)
  message(FATAL_ERROR "cairn: the LibTorch found at ${Torch_DIR} has no version file (TorchConfigVersion.cmake). "
                      "cairn needs LibTorch 1.13 or newer: Debian's `apt-get install libtorch-dev`, or "
                      "`pip install torch` and -DCMAKE_PREFIX_PATH=\"$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')\"")
endif()
if(CAIRN_TORCH_VERSION VERSION_LESS 1.13)
  message(FATAL_ERROR "cairn: LibTorch ${CAIRN_TORCH_VERSION} at ${Torch_DIR} is too old; cairn needs 1.13 or newer "
                      "(Debian 12: apt-get install libtorch-dev; or pip install torch and point CMAKE_PREFIX_PATH at "
                      "torch.utils.cmake_prefix_path)")
endif()
string(REGEX MATCH "^[0-9]+" CAIRN_TORCH_MAJOR "${CAIRN_TORCH_VERSION}")
# TorchConfig.cmake sets TORCH_INSTALL_PREFIX: /usr for Debian's package,
# <site-packages>/torch for the wheel.
if(TORCH_INSTALL_PREFIX)
  set(CAIRN_TORCH_PREFIX "${TORCH_INSTALL_PREFIX}")
else()
  get_filename_component(CAIRN_TORCH_PREFIX "${Torch_DIR}/../../.." ABSOLUTE)
endif()
if(TORCH_INCLUDE_DIRS)
  list(GET TORCH_INCLUDE_DIRS 0 cairn_torch_include)
else()
  set(cairn_torch_include "${CAIRN_TORCH_PREFIX}/include")
endif()

# TorchConfig.cmake adds libc10 with find_library(... PATHS <prefix>/lib), which
# searches the system first: with Debian's libtorch-dev installed beside a pip
# wheel, a wheel build linked Debian's libc10.so 1.13 next to the wheel's
# libtorch 2.x. Put the wheel's own back.
if(c10_LIBRARY AND NOT c10_LIBRARY MATCHES "^${CAIRN_TORCH_PREFIX}/")
  find_library(CAIRN_C10_LIBRARY c10 PATHS "${CAIRN_TORCH_PREFIX}/lib" NO_DEFAULT_PATH)
  if(NOT CAIRN_C10_LIBRARY)
    message(FATAL_ERROR "cairn: LibTorch at ${CAIRN_TORCH_PREFIX} has no lib/libc10.so; the only libc10 found is "
                        "${c10_LIBRARY}, which belongs to another LibTorch")
  endif()
  list(TRANSFORM TORCH_LIBRARIES REPLACE "^${c10_LIBRARY}$" "${CAIRN_C10_LIBRARY}")
endif()

# Distributed training needs c10d (USE_DISTRIBUTED) with its Gloo backend.
set(cairn_c10d_dir "${cairn_torch_include}/torch/csrc/distributed/c10d")
if(NOT EXISTS "${cairn_c10d_dir}/ProcessGroupGloo.hpp" OR NOT EXISTS "${cairn_c10d_dir}/TCPStore.hpp")
  message(FATAL_ERROR "cairn: the LibTorch at ${CAIRN_TORCH_PREFIX} was built without c10d "
                      "(no torch/csrc/distributed/c10d/ProcessGroupGloo.hpp). cairn's data parallelism needs a "
                      "LibTorch built with USE_DISTRIBUTED=1 and Gloo: Debian's libtorch-dev or PyPI's torch wheel")
endif()
# The headers of c10d's Gloo backend include Gloo's own, which PyPI's wheel does
# not ship (Debian's libtorch-dev depends on libgloo-dev). cairn uses Gloo only
# through c10d: it holds shared_ptr<gloo::transport::Device> handles made
# inside libtorch and runs no inline Gloo code, so Gloo's headers need only
# declare the same names. Debian's libgloo-dev (Gloo 0.5) serves both
# platforms; test_distributed proves the pairing on each build.
find_path(CAIRN_GLOO_INCLUDE_DIR gloo/algorithm.h HINTS "${cairn_torch_include}")
if(NOT CAIRN_GLOO_INCLUDE_DIR OR NOT EXISTS "${CAIRN_GLOO_INCLUDE_DIR}/gloo/algorithm.h")
  message(FATAL_ERROR "cairn: Gloo's headers (gloo/algorithm.h) were not found. c10d's ProcessGroupGloo.hpp includes "
                      "them and the LibTorch at ${CAIRN_TORCH_PREFIX} does not ship them: "
                      "apt-get install libgloo-dev (or pass -DCAIRN_GLOO_INCLUDE_DIR=<dir holding gloo/>)")
endif()
file(STRINGS "${CAIRN_GLOO_INCLUDE_DIR}/gloo/config.h" cairn_gloo_major REGEX "define GLOO_VERSION_MAJOR")
if(NOT cairn_gloo_major MATCHES "GLOO_VERSION_MAJOR 0")
  message(FATAL_ERROR "cairn: Gloo's headers at ${CAIRN_GLOO_INCLUDE_DIR} are not Gloo 0.x (${cairn_gloo_major}), "
                      "the series c10d's ProcessGroupGloo.hpp is written against")
endif()

# The C++ ABI: LibTorch's _GLIBCXX_USE_CXX11_ABI must match this compiler's,
# or every std::string in LibTorch's API fails to link.
# Debian's TorchConfig states it in TORCH_CXX_FLAGS; the 2.x wheel's does
# not, so read it off libc10: names built with the C++11 ABI mangle
# std::__cxx11::basic_string.
set(cairn_torch_abi "")
if(TORCH_CXX_FLAGS MATCHES "_GLIBCXX_USE_CXX11_ABI=([01])")
  set(cairn_torch_abi "${CMAKE_MATCH_1}")
else()
  set(cairn_c10 "${CAIRN_C10_LIBRARY}")
  if(NOT cairn_c10)
    set(cairn_c10 "${c10_LIBRARY}")
  endif()
  if(cairn_c10 AND EXISTS "${cairn_c10}")
    file(STRINGS "${cairn_c10}" cairn_cxx11_names REGEX "__cxx11" LIMIT_COUNT 1)
    if(cairn_cxx11_names)
      set(cairn_torch_abi 1)
    else()
      set(cairn_torch_abi 0)
    endif()
  endif()
endif()
if(NOT cairn_torch_abi STREQUAL "")
  include(CheckCXXSourceCompiles)
  set(CMAKE_REQUIRED_QUIET ON)  # (the test compile uses CMAKE_CXX_FLAGS itself)
  check_cxx_source_compiles("#include <string>
    #if _GLIBCXX_USE_CXX11_ABI != ${cairn_torch_abi}
    #error ABI
    #endif
    int main() { return 0; }" CAIRN_ABI_MATCHES_TORCH_${cairn_torch_abi})
  if(NOT CAIRN_ABI_MATCHES_TORCH_${cairn_torch_abi})
    message(FATAL_ERROR "cairn: the LibTorch at ${CAIRN_TORCH_PREFIX} was built with -D_GLIBCXX_USE_CXX11_ABI="
                        "${cairn_torch_abi}, but this compiler with CMAKE_CXX_FLAGS='${CMAKE_CXX_FLAGS}' uses the "
                        "other value of _GLIBCXX_USE_CXX11_ABI. Use a LibTorch of the same ABI (PyPI's torch >= 2.7 "
                        "and Debian's libtorch-dev use 1), or drop the flag from CMAKE_CXX_FLAGS")
  endif()
endif()

# CUDA and NCCL: read from the targets LibTorch exports (torch_cuda carries
# USE_C10D_NCCL when its c10d has ProcessGroupNCCL).
set(CAIRN_HAVE_CUDA OFF)
set(CAIRN_HAVE_NCCL OFF)
if(TARGET torch_cuda)
  set(CAIRN_HAVE_CUDA ON)
  get_target_property(cairn_cuda_defs torch_cuda INTERFACE_COMPILE_DEFINITIONS)
  if(CAIRN_TORCH_MAJOR GREATER_EQUAL 2 AND cairn_cuda_defs MATCHES "USE_C10D_NCCL"
     AND EXISTS "${cairn_c10d_dir}/ProcessGroupNCCL.hpp")
    # ProcessGroupNCCL.hpp includes <nccl.h>: the wheel's nvidia-nccl package
    # has it beside torch/, a CUDA toolkit may have it too.
    find_path(CAIRN_NCCL_INCLUDE_DIR nccl.h
      HINTS "${CAIRN_TORCH_PREFIX}/../nvidia/nccl/include" ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
    if(NOT CAIRN_NCCL_INCLUDE_DIR)
      message(FATAL_ERROR "cairn: the LibTorch at ${CAIRN_TORCH_PREFIX} has NCCL, but nccl.h was not found "
                          "(pip's nvidia-nccl package or a CUDA toolkit has it; or pass -DCAIRN_NCCL_INCLUDE_DIR=DIR)")
    endif()
    set(CAIRN_HAVE_NCCL ON)
  endif()
endif()
message(STATUS "cairn: LibTorch ${CAIRN_TORCH_VERSION} at ${CAIRN_TORCH_PREFIX} (CUDA ${CAIRN_HAVE_CUDA}, "
               "NCCL ${CAIRN_HAVE_NCCL}, Gloo headers ${CAIRN_GLOO_INCLUDE_DIR})")
