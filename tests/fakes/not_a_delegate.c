/* A shared library that is not a delegate plugin: load_delegate() finds no plugin symbols. */
int edgefleet_fake_nothing(void) { return 0; }
