// Monitoring Metrics Publisher for the identity on one Azure resource of any type, given by id:
// the Azure Monitor custom-metrics sink needs it on every resource it posts metrics for.
// Deploy this module into the resource's own resource group (main.bicep does).
//
// Bicep only accepts a typed resource as the scope of a role assignment, and the type of a
// resource given by id is not known when the template is written. ARM itself accepts an extension
// resource scoped by the resource's path relative to the resource group ("Microsoft.Web/sites/x"),
// so the assignment is written as a nested deployment whose values are all computed here
// (no template expressions inside it).
@description('Full resource id: /subscriptions/<s>/resourceGroups/<rg>/providers/<namespace>/<type>/<name>[/...].')
param targetId string

@description('Principal (object) id of the identity.')
param principalId string

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
var relativeScope = substring(targetId, indexOf(toLower(targetId), '/providers/') + length('/providers/'))

resource assignment 'Microsoft.Resources/deployments@2022-09-01' = {
  name: take('metrics-publisher-${uniqueString(targetId, principalId)}', 64)
  properties: {
    mode: 'Incremental'
    template: {
      '$schema': 'https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#'
      contentVersion: '1.0.0.0'
      resources: [
        {
          type: 'Microsoft.Authorization/roleAssignments'
          apiVersion: '2022-04-01'
          name: guid(targetId, principalId, monitoringMetricsPublisher)
          scope: relativeScope
          properties: {
            roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
            principalId: principalId
            principalType: 'ServicePrincipal'
          }
        }
      ]
    }
  }
}
