// Precompiled header for every cairn target: the heavy third-party headers.
// Not part of the public API; include the cairn headers you use instead.
#pragma once
#include <torch/torch.h>
#include <boost/signals2.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>
