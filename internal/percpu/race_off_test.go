//go:build !race

package percpu_test

const raceEnabled = false
