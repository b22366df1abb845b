package v1alpha1

// Condition types.
const (
	// ConditionReady is True when every other condition of the Mesh is satisfied; its reason and message are those
	// of the first one that is not.
	ConditionReady = "Ready"
	// ConditionAccepted is True when the object is valid and does not conflict with another object.
	ConditionAccepted = "Accepted"
	// ConditionIdentityReady is True when the trust anchor and identity issuer certificates are issued and valid.
	ConditionIdentityReady = "IdentityReady"
	// ConditionConfigReady is True when proxy configuration has been rendered into every meshed namespace.
	ConditionConfigReady = "ConfigReady"
	// ConditionProxiesReady is True when every desired proxy reports ready.
	ConditionProxiesReady = "ProxiesReady"
	// ConditionWebhookReady is True when the injection webhook is configured and serving.
	ConditionWebhookReady = "WebhookReady"
	// ConditionResolvedRefs is True when every object a MeshPolicy or TrafficSplit names exists.
	ConditionResolvedRefs = "ResolvedRefs"
)

// Condition reasons.
const (
	// ReasonReady: the condition holds.
	ReasonReady = "Ready"
	// ReasonAccepted: the object is valid and in force.
	ReasonAccepted = "Accepted"
	// ReasonResolvedRefs: every reference resolves.
	ReasonResolvedRefs = "ResolvedRefs"
	// ReasonInvalidSpec: the spec breaks a rule the API server cannot check; the message names the field.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonNamespaceConflict: a namespace the Mesh selects already belongs to an older Mesh.
	ReasonNamespaceConflict = "NamespaceConflict"
	// ReasonNoNamespaces: the Mesh's namespaceSelector matches no namespace.
	ReasonNoNamespaces = "NoNamespaces"
	// ReasonNotMeshed: the object's namespace belongs to no Mesh, so nothing enforces it.
	ReasonNotMeshed = "NotMeshed"
	// ReasonServiceNotFound: a referenced Service does not exist.
	ReasonServiceNotFound = "ServiceNotFound"
	// ReasonBackendNotFound: a TrafficSplit backend does not exist or lacks the root service's ports.
	ReasonBackendNotFound = "BackendNotFound"
	// ReasonPortNotFound: a referenced port is not a port of the Service.
	ReasonPortNotFound = "PortNotFound"
	// ReasonConflicted: another object already configures the same target.
	ReasonConflicted = "Conflicted"
	// ReasonPending: the manager has not finished the work this condition describes.
	ReasonPending = "Pending"
	// ReasonControlPlaneNamespaceMissing: the Mesh's control-plane namespace does not exist.
	ReasonControlPlaneNamespaceMissing = "ControlPlaneNamespaceMissing"
	// ReasonCertManagerMissing: the cert-manager CRDs are not installed.
	ReasonCertManagerMissing = "CertManagerMissing"
	// ReasonIssuerNotReady: cert-manager has not issued a certificate the mesh needs; the message says why.
	ReasonIssuerNotReady = "IssuerNotReady"
	// ReasonConfigTooLarge: the proxy configuration does not fit in the ConfigMaps a namespace may hold.
	ReasonConfigTooLarge = "ConfigTooLarge"
	// ReasonProxiesNotReady: some meshed pods' proxies are not ready; the message names them.
	ReasonProxiesNotReady = "ProxiesNotReady"
	// ReasonDisabled: the feature the condition describes is turned off.
	ReasonDisabled = "Disabled"
	// ReasonWebhookCertMissing: the injector's serving certificate has not been issued.
	ReasonWebhookCertMissing = "WebhookCertMissing"
	// ReasonApplyFailed: the manager could not write an object it renders; the message has the API error.
	ReasonApplyFailed = "ApplyFailed"
	// ReasonIdentityServiceElsewhere (IdentityReady, Ready): the manager's identity service issues the certificates of
	// another Mesh (its --identity-mesh flag), so this Mesh's proxies cannot obtain any.
	ReasonIdentityServiceElsewhere = "IdentityServiceElsewhere"
)
