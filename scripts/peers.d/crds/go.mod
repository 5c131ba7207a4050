// The Gateway API CRDs (scripts/peers copies config/crd/standard from this module's
// folder); nothing here is compiled, go.sum only pins the module's contents.
module portico.test/peers/crds

go 1.26.0

require sigs.k8s.io/gateway-api v1.6.3
