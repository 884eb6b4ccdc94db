"""hyperworker: the worker side of a fleet (docs/fleet.md). The daemon's side and the
protocol between the two are in hypersdk.daemon.fleet; the daemon never imports this."""
