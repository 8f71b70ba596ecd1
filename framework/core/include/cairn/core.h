// cairn's core (library cairn::core): what a hand-written loop or a Trainer
// needs — events, loop state, metrics, checkpoint files, optimizer, scheduler
// and RNG state. No YAML: the application layer (cairn/cairn.h) adds that.
#pragma once

#include "cairn/async_writer.h"
#include "cairn/callback.h"
#include "cairn/checkpoint_file.h"
#include "cairn/checkpoint_store.h"
#include "cairn/data.h"
#include "cairn/distributed.h"
#include "cairn/events.h"
#include "cairn/host_sync.h"
#include "cairn/json.h"
#include "cairn/loop.h"
#include "cairn/metrics.h"
#include "cairn/model.h"
#include "cairn/objectives.h"
#include "cairn/optim_state.h"
#include "cairn/optimizers.h"
#include "cairn/rng.h"
#include "cairn/run_checkpoint.h"
#include "cairn/run_lock.h"
#include "cairn/schedulers.h"
#include "cairn/signals.h"
#include "cairn/state.h"
#include "cairn/torch_fwd.h"
#include "cairn/trainer.h"
#include "cairn/value.h"
