package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// EnvPrefix starts the name of every environment variable Herald reads.
const EnvPrefix = "HERALD_"

// EnvConfigFile names the configuration file when no --config flag is given.
const EnvConfigFile = EnvPrefix + "CONFIG"

// MaxFileBytes caps the size of a configuration file.
const MaxFileBytes = 1 << 20

// Load returns the configuration built from, in increasing precedence: the
// defaults; the YAML file at path (when path is empty, the file named by
// HERALD_CONFIG in env, else none); the HERALD_* variables in env (in
// os.Environ form); and override, typically the command-line flags (nil for
// none). The result has Defaults applied and passed Validate.
//
// Unknown keys in the file are errors. Environment variables with an empty
// value count as unset; HERALD_* names Herald does not know are ignored.
func Load(path string, env []string, override func(*Config)) (Config, error) {
	var c Config
	if path == "" {
		path = lookupEnv(env, EnvConfigFile)
	}
	if path != "" {
		data, err := readFile(path)
		if err != nil {
			return Config{}, err
		}
		if err := ParseYAML(data, &c); err != nil {
			return Config{}, fmt.Errorf("config: %s: %w", path, err)
		}
	}
	if err := ApplyEnv(&c, env); err != nil {
		return Config{}, err
	}
	if override != nil {
		override(&c)
	}
	c = c.Defaults()
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config: invalid configuration:\n%w", err)
	}
	return c, nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", path, err)
	}
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("config: %s: larger than %d bytes", path, MaxFileBytes)
	}
	return data, nil
}

// ParseYAML decodes one YAML document over c: keys it holds replace c's
// values, others stay. Unknown keys and values of the wrong type are errors;
// an empty document changes nothing.
func ParseYAML(data []byte, c *Config) (err error) {
	// yaml.v3 reports errors by panicking internally and recovering; this
	// guard keeps any input it fails to recover from an error too.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: cannot parse: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	next := *c
	if err := dec.Decode(&next); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return errors.New("yaml: the file must hold a single document")
	}
	*c = next
	return nil
}

// EnvVar describes the environment variable of one setting.
type EnvVar struct {
	Name string // e.g. HERALD_SSE_HEARTBEAT
	Key  string // e.g. sse.heartbeat
}

// EnvVars lists the environment variable of every setting that has one
// (every setting but namespaces), in field order.
func EnvVars() []EnvVar {
	var out []EnvVar
	var c Config
	walk(reflect.ValueOf(&c).Elem(), "", func(key string, _ reflect.Value) {
		out = append(out, EnvVar{Name: envName(key), Key: key})
	})
	return out
}

// ApplyEnv sets the fields named by HERALD_* variables in env (in
// os.Environ form). It reports every malformed value at once.
func ApplyEnv(c *Config, env []string) error {
	var errs []error
	walk(reflect.ValueOf(c).Elem(), "", func(key string, f reflect.Value) {
		name := envName(key)
		s := lookupEnv(env, name)
		if s == "" {
			return
		}
		if err := setString(f, s); err != nil {
			errs = append(errs, fmt.Errorf("%s (%s): %w", name, key, err))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("config: environment:\n%w", err)
	}
	return nil
}

// lookupEnv returns the last value of name in env, or "".
func lookupEnv(env []string, name string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == name {
			v = val
		}
	}
	return v
}

func envName(key string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

var durationType = reflect.TypeFor[time.Duration]()

// walk calls fn for every scalar setting under v (a struct), with its
// dotted yaml key. Maps (namespaces) and lists of objects (pipelines) have
// no scalar form and are skipped.
func walk(v reflect.Value, prefix string, fn func(key string, f reflect.Value)) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if !sf.IsExported() || name == "" || name == "-" {
			continue
		}
		key := prefix + name
		f := v.Field(i)
		switch {
		case f.Kind() == reflect.Struct:
			walk(f, key+".", fn)
		case f.Kind() == reflect.Map:
		case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.Struct:
		default:
			fn(key, f)
		}
	}
}

// setString parses s into f according to f's type.
func setString(f reflect.Value, s string) error {
	s = strings.TrimSpace(s)
	switch {
	case f.Type() == durationType:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration like 25s or 1m30s", s)
		}
		f.SetInt(int64(d))
	case f.Kind() == reflect.String:
		f.SetString(s)
	case f.Kind() == reflect.Int:
		n, err := strconv.ParseInt(s, 10, 0)
		if err != nil {
			return fmt.Errorf("%q is not an integer", s)
		}
		f.SetInt(n)
	case f.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not true or false", s)
		}
		f.SetBool(b)
	case f.Kind() == reflect.Slice && f.Type().Elem().Kind() == reflect.String:
		var list []string
		for _, part := range strings.Split(s, ",") {
			if part = strings.TrimSpace(part); part != "" {
				list = append(list, part)
			}
		}
		f.Set(reflect.ValueOf(list))
	default:
		// A new field of another kind needs a case here; the test
		// TestEveryScalarHasAnEnvVar fails until it has one.
		return fmt.Errorf("settings of type %s cannot be set from the environment", f.Type())
	}
	return nil
}
