//go:build race

package controlstore_test

// raceEnabled shortens tests whose cost the race detector multiplies.
const raceEnabled = true
