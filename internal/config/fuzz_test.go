package config

import "testing"

// FuzzLoadYAML feeds arbitrary bytes to the file parser and validation:
// they must return errors, never panic.
func FuzzLoadYAML(f *testing.F) {
	for _, seed := range []string{
		"",
		"listen: 127.0.0.1:8080\n",
		"sse:\n  heartbeat: 25s\n  retry: 2s\n",
		"namespaces:\n  thread: {history_size: 5, history_ttl: 1m}\n",
		"api_keys: [a, b]\nlimits: {max_connections: -1}\n",
		"a: &a [*a, *a]\n",
		"listen: !!binary aGVsbG8=\n",
		"shutdown_timeout: 9223372036854775807\n",
		"limits: {max_message_bytes: 99999999999999999999}\n",
		"---\n---\n",
		"{",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c Config
		if err := ParseYAML(data, &c); err != nil {
			return
		}
		c = c.Defaults()
		_ = c.Validate()
		_ = c.HubConfig(nil)
	})
}
