"""What installs and runs the control plane: the local cluster, the head's actors and gateway
(control_plane), the driver that keeps them (control_driver) and the admin API over HTTP."""
