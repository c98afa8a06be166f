//go:build race

package fast

const raceEnabled = true
