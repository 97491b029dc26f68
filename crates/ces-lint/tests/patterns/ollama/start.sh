#!/bin/sh
ollama serve &
sleep 2
ollama pull llama3.1
wait
