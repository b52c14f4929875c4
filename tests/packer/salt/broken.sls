this-state-fails:
  cmd.run:
    - name: "echo the broken state ran; exit 3"
