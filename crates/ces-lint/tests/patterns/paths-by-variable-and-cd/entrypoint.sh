#!/bin/sh
exec python /home/app/serve.py
