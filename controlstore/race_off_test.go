//go:build !race

package controlstore_test

const raceEnabled = false
