"""Stand-ins that drive one part of warpdrive without the rest of the stack, shared by the tests
and the benchmarks (neither depends on the other's tree). Not part of the installed package
(setup.cfg packages `warpdrive` only)."""
