"""The vLLM appliance: boot renderer, manager API and portal."""
