package v1alpha1

// PathMatchType says how a path is compared.
// +kubebuilder:validation:Enum=Exact;PathPrefix;RegularExpression
type PathMatchType string

const (
	// PathMatchExact matches the path exactly.
	PathMatchExact PathMatchType = "Exact"
	// PathMatchPathPrefix matches the path and everything below it, element by element: /api matches /api and
	// /api/v1, not /apiv1.
	PathMatchPathPrefix PathMatchType = "PathPrefix"
	// PathMatchRegularExpression matches the whole path against an RE2 regular expression.
	PathMatchRegularExpression PathMatchType = "RegularExpression"
)

// HeaderMatchType says how a header value is compared.
// +kubebuilder:validation:Enum=Exact;RegularExpression
type HeaderMatchType string

const (
	// HeaderMatchExact matches the header value exactly.
	HeaderMatchExact HeaderMatchType = "Exact"
	// HeaderMatchRegularExpression matches the whole value against an RE2 regular expression.
	HeaderMatchRegularExpression HeaderMatchType = "RegularExpression"
)

// HTTPMethod is an HTTP request method.
// +kubebuilder:validation:Enum=GET;HEAD;POST;PUT;DELETE;CONNECT;OPTIONS;TRACE;PATCH
type HTTPMethod string

// PathMatch matches the request path.
// +kubebuilder:validation:XValidation:rule="self.type == 'RegularExpression' || self.value.startsWith('/')",message="path value must start with '/'"
type PathMatch struct {
	// Type of comparison: Exact, PathPrefix or RegularExpression. Default: PathPrefix.
	// +kubebuilder:default=PathPrefix
	// +optional
	Type PathMatchType `json:"type,omitempty"`

	// Value is the path, prefix or regular expression. Required.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	Value string `json:"value"`
}

// HeaderMatch matches one request header.
type HeaderMatch struct {
	// Name of the header, case-insensitive. Required.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9!#$%&'*+\-.^_|~]+$`
	Name string `json:"name"`

	// Type of comparison: Exact or RegularExpression. Default: Exact.
	// +kubebuilder:default=Exact
	// +optional
	Type HeaderMatchType `json:"type,omitempty"`

	// Value to compare with. Required.
	// +kubebuilder:validation:MaxLength=4096
	Value string `json:"value"`
}

// HTTPMatch matches HTTP requests: every field that is set must match.
type HTTPMatch struct {
	// Path matches the request path. Default: any path.
	// +optional
	Path *PathMatch `json:"path,omitempty"`

	// Method matches the request method. Default: any method.
	// +optional
	Method HTTPMethod `json:"method,omitempty"`

	// Headers must all match. Default: no header condition.
	// +kubebuilder:validation:MaxItems=16
	// +optional
	Headers []HeaderMatch `json:"headers,omitempty"`
}
