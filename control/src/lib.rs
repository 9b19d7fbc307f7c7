//! IKEv2 control plane (in progress: see the IKE issue).
