// All of cairn's framework: the core (cairn/core.h) and the application layer
// (YAML experiments, registry, built-in data sets and models, reports).
// The callback library is cairn/callbacks.h.
#pragma once

#include "cairn/core.h"

#include "cairn/builtin_callbacks.h"
#include "cairn/config.h"
#include "cairn/datasets.h"
#include "cairn/experiment.h"
#include "cairn/models.h"
#include "cairn/registry.h"
#include "cairn/report.h"
