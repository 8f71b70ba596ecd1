// The `cairn` program: the built-in callbacks plus the command line.
#include "cairn/builtin_callbacks.h"
#include "cairn/cli.h"

int main(int argc, char** argv) {
  cairn::register_builtin_callbacks();
  return cairn::cli_main(argc, argv);
}
