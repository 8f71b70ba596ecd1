// Compiles the shared precompiled header (see framework/include/cairn/pch.h).
#include "cairn/pch.h"
