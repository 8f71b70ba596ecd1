// All of cairn's callbacks.
#pragma once

#include "cairn/callbacks/averaging.h"
#include "cairn/callbacks/checkpoint.h"
#include "cairn/callbacks/csv_logger.h"
#include "cairn/callbacks/early_stopping.h"
#include "cairn/callbacks/finetuning.h"
#include "cairn/callbacks/guards.h"
#include "cairn/callbacks/progress_bar.h"
#include "cairn/callbacks/tensorboard.h"
