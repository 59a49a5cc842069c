package checkpoint

import (
	"bytes"

	"github.com/mambabyte/mambabyte/internal/model"
)

// LoadBytes is Load for a checkpoint held in memory (a model embedded in
// the binary): the contents of config.json and model.safetensors. name
// stands for the directory in error messages.
func LoadBytes(name string, config, safetensors []byte) (model.Config, map[string][]float32, Format, error) {
	cfgPath := name + "/" + ConfigFile
	cfg, format, info, err := parseConfig(cfgPath, config)
	if err != nil {
		return model.Config{}, nil, "", err
	}
	wpath := name + "/" + SafetensorsFile
	tensors, err := readSafetensors(wpath, bytes.NewReader(safetensors), int64(len(safetensors)))
	return finish(cfg, format, info, wpath, tensors, err)
}
