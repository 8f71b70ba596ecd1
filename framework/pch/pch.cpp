// Compiles the shared precompiled header (see framework/pch/pch.h).
#include "pch.h"
